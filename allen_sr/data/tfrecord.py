"""The TFRecord wire format, written by hand: tf.train.Example records of raw tiles, framed.

A record is a serialized tf.train.Example (five nested length-delimited protobuf fields) holding
one raw uint8 tile with tensor2tensor's image features (`image/encoded`, `image/format` = "raw",
`image/height`, `image/width`, `image/channels`, `image/source`, `image/top`, `image/left`).
A TFRecord file is a sequence of frames: length (uint64), masked CRC32C of the length, the
data, masked CRC32C of the data. No TensorFlow here; tests parse the output with TensorFlow.
"""
from __future__ import annotations

import functools
import struct

import google_crc32c
import numpy as np

__all__ = ["tile_example", "tfrecord_frame", "framed_tile_parts", "split_frames"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        bits, n = n & 0x7F, n >> 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _feature_entry(key: bytes, feature: bytes) -> bytes:
    # Features.feature is map<string, Feature>: each entry is a message {1: key, 2: value}.
    return _delimited(1, _delimited(1, key) + _delimited(2, feature))


def _bytes_feature(value: bytes) -> bytes:
    return _delimited(1, _delimited(1, value))  # Feature.bytes_list = 1 -> BytesList.value = 1


def _int64_feature(value: int) -> bytes:
    return _delimited(3, _delimited(1, _varint(value)))  # Feature.int64_list = 3, packed values


@functools.lru_cache(maxsize=65536)
def _int64_entry(key: bytes, value: int) -> bytes:
    return _feature_entry(key, _int64_feature(value))


@functools.lru_cache(maxsize=64)
def _encoded_prefix(n_bytes: int) -> bytes:
    """The `image/encoded` entry up to its value: the same for every tile of one shape."""
    return _feature_entry(b"image/encoded", _bytes_feature(bytes(n_bytes)))[:-n_bytes]


@functools.lru_cache(maxsize=1024)
def _constant_entries(shape: tuple, source: str) -> bytes:
    """The entries shared by all tiles of one image: format, shape and source."""
    height, width, channels = shape
    return b"".join((
        _feature_entry(b"image/format", _bytes_feature(b"raw")),
        _int64_entry(b"image/height", height),
        _int64_entry(b"image/width", width),
        _int64_entry(b"image/channels", channels),
        _feature_entry(b"image/source", _bytes_feature(source.encode("utf-8", "surrogateescape"))),
    ))


def _example_parts(tile: np.ndarray, source: str, top: int, left: int) -> tuple[bytes, bytes, bytes]:
    """A tile's serialized tf.train.Example as (head, pixels, tail): head + pixels + tail."""
    pixels = tile.tobytes()
    tail = b"".join((_constant_entries(tile.shape, source),
                     _int64_entry(b"image/top", int(top)), _int64_entry(b"image/left", int(left))))
    prefix = _encoded_prefix(len(pixels))
    # Example.features is field 1, length-delimited: tag 0x0a, then the length of the Features.
    head = b"\n" + _varint(len(prefix) + len(pixels) + len(tail)) + prefix
    return head, pixels, tail


def tile_example(tile: np.ndarray, source: str, top: int, left: int) -> bytes:
    """A serialized tf.train.Example holding one raw tile with t2t's image features.

    Encoded by hand from cached pieces, so the tiling workers stay free of TensorFlow (and a
    record costs a fraction of tf.train.Example's time). Tests parse it with tf.train.Example.
    """
    return b"".join(_example_parts(tile, source, top, left))


def _mask(crc: int) -> bytes:
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _framed(pieces: tuple[bytes, ...]) -> list[bytes]:
    """The pieces of one record framed as in a TFRecord file, still in pieces (no join).

    The frame is: length (uint64), masked CRC32C of the length, the data, masked CRC32C of the
    data. The length and its CRC are prepended to the first piece, the data's CRC (computed
    across the pieces) appended to the last.
    """
    length = struct.pack("<Q", sum(len(p) for p in pieces))
    crc = google_crc32c.value(pieces[0])
    for piece in pieces[1:]:
        crc = google_crc32c.extend(crc, piece)
    parts = list(pieces)
    parts[0] = length + _mask(google_crc32c.value(length)) + parts[0]
    parts[-1] = parts[-1] + _mask(crc)
    return parts


def tfrecord_frame(record: bytes) -> bytes:
    """`record` framed as in a TFRecord file: length, masked CRC32C of it, data, masked CRC32C."""
    return b"".join(_framed((record,)))


def framed_tile_parts(tile: np.ndarray, source: str, top: int, left: int) -> list[bytes]:
    """tfrecord_frame(tile_example(...)) as pieces, without joining the pixels twice."""
    return _framed(_example_parts(tile, source, top, left))


def split_frames(buffer, count: int) -> list[memoryview]:
    """The first `count` framed records of `buffer` (bytes-like; views, no copies); checks the framing."""
    view, frames, offset = memoryview(buffer), [], 0
    for _ in range(count):
        end = offset + 16
        if end <= len(view):
            end += struct.unpack_from("<Q", view, offset)[0]
        if end > len(view):
            raise ValueError(f"truncated record at byte {offset} of a {len(view)}-byte bucket segment")
        frames.append(view[offset:end])
        offset = end
    return frames
