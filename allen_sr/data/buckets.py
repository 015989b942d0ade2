"""The two passes of datagen's external shuffle, as functions run in worker processes.

Pass 1 (:func:`tile_image_to_buckets`): read one image, keep its tissue tiles, frame them as
TFRecords and append them to randomly chosen bucket files, one bucket per output shard.
Pass 2 (:func:`write_shard`): shuffle one bucket file's records in place; it becomes the shard.
The output depends only on the inputs and the seed, not on which worker ran what.
"""
from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from allen_sr.data import images, tiles
from allen_sr.data.tfrecord import framed_tile_parts, split_frames

__all__ = ["SEGMENT_BYTES", "Segment", "ImageTiles", "append_segment",
           "tile_image_to_buckets", "write_shard", "release_shuffle_buffer"]

SEGMENT_BYTES = 16 << 20  # at most this much of one image's records per append (one write)


@dataclass
class Segment:
    """`count` records of one image in one bucket file, at [offset, offset + length)."""

    image: int  # index of the image in the build's input order
    path: str
    offset: int
    length: int
    count: int


@dataclass
class ImageTiles:
    """What a tiling worker returns for one image: counts and where its records went."""

    index: int
    path: str
    key: str
    kept: int
    rejected: int
    histogram: np.ndarray | None  # [3, 256] pixel value counts of the kept tiles
    segments: list = field(default_factory=list)  # (bucket, Segment)
    error: str | None = None


def _write_error(path: str, exc: OSError) -> OSError:
    """`exc` with the file and what to do in its message (os.write's errors name no file)."""
    return OSError(exc.errno, f"datagen could not write {path}: {exc.strerror or exc}; make room "
                   "(disk space, quota, file size limit) or choose another --data_dir, then run "
                   "datagen again (the previous dataset, if any, is untouched)")


def append_segment(path: str, data) -> int:
    """Append the bytes-like `data` to `path` in one write; returns the offset it landed at.

    Several processes append to one file: O_APPEND moves to the end and writes under the
    file's lock, so each write lands whole, and the fd's position afterwards tells where.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        try:
            n = os.write(fd, data)
        except OSError as exc:
            raise _write_error(path, exc) from exc
        if n != len(data):  # e.g. disk full: the rest could not follow contiguously
            raise _write_error(path, OSError(errno.ENOSPC, f"short write ({n} of {len(data)} bytes)"))
        return os.lseek(fd, 0, os.SEEK_CUR) - n
    finally:
        os.close(fd)


def _image_rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogateescape")).digest()  # any file name
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def tile_image_to_buckets(index: int, path: str, size: int, n_buckets: int, bucket_prefix: str,
                          seed: int) -> ImageTiles:
    """Pass 1 for one image (runs in a worker): tile, filter, frame and append to buckets.

    All workers append to `<bucket_prefix>-<bucket>`, each write one whole segment of at most
    SEGMENT_BYTES (joined in this worker's heap, which is reused from image to image). The bucket
    of each tile is drawn from a random stream seeded by the image id.
    """
    key = images.image_id(path)
    try:
        image = images.load_image(path, size)
    except images.ImageSkipped as exc:
        return ImageTiles(index, path, key, 0, 0, None, error=str(exc))
    kept, positions, rejected = tiles.tissue_tiles(image, size)
    del image
    # Pillow's C histogram of the kept pixels: 5x faster than three strided np.bincount.
    histogram = np.zeros((3, 256), np.int64)
    if len(kept):
        histogram[:] = np.asarray(Image.fromarray(kept.reshape(-1, size, 3)).histogram()).reshape(3, 256)
    buckets = _image_rng(seed, key).integers(n_buckets, size=len(kept))
    result = ImageTiles(index, path, key, len(kept), rejected, histogram)
    per_segment = max(1, SEGMENT_BYTES // (kept[0].nbytes + 200)) if len(kept) else 1
    for bucket in np.unique(buckets):
        bucket_path = f"{bucket_prefix}-{int(bucket):05d}"
        members = np.flatnonzero(buckets == bucket)
        for start in range(0, len(members), per_segment):
            chunk = members[start:start + per_segment]
            data = b"".join([part for i in chunk for part in framed_tile_parts(kept[i], key, *positions[i])])
            offset = append_segment(bucket_path, data)
            result.segments.append((int(bucket), Segment(index, bucket_path, offset, len(data), len(chunk))))
    return result


_shuffle_buffer = bytearray()  # pass 2's buffer, kept by each worker from shard to shard


def release_shuffle_buffer() -> None:
    """Free pass 2's buffer in this process (the build's own process after a serial build)."""
    global _shuffle_buffer
    _shuffle_buffer = bytearray()


def write_shard(segments: list[Segment], out_path: str, shuffle_seed: str) -> int:
    """Pass 2 for one shard (runs in a worker): shuffle its bucket file's records in place.

    `segments` (all in one bucket file) are read in image order, so the shard's content depends
    only on the inputs and the seed, not on where the workers' appends landed. The records are
    copied in shuffled order into a buffer this worker reuses, written back over the bucket
    file, which is then renamed to `out_path`. Returns the number of records.
    """
    global _shuffle_buffer
    if not segments:  # no tile drew this bucket
        open(out_path, "wb").close()
        return 0
    bucket_path = segments[0].path
    if any(seg.path != bucket_path for seg in segments):
        raise ValueError(f"segments of one shard in several bucket files: {bucket_path}, ...")
    total = sum(seg.length for seg in segments)
    with open(bucket_path, "r+b", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size != total:
            raise ValueError(f"bucket file {bucket_path} holds {size} bytes, its segments {total}")
        if len(_shuffle_buffer) < total:
            _shuffle_buffer = bytearray()  # free the old one first
            _shuffle_buffer = bytearray(total)
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        frames: list[memoryview] = []
        try:
            for seg in sorted(segments, key=lambda s: (s.image, s.offset)):
                frames += split_frames(memoryview(m)[seg.offset:seg.offset + seg.length], seg.count)
            random.Random(shuffle_seed).shuffle(frames)
            buffer, pos = memoryview(_shuffle_buffer), 0
            for frame in frames:
                buffer[pos:pos + len(frame)] = frame
                pos += len(frame)
            count = len(frames)
        finally:
            frames.clear()  # release the views into the map before closing it
            try:
                m.close()
            except BufferError:  # a view is still held by a traceback; garbage collection closes it
                pass
        data = memoryview(_shuffle_buffer)[:total]
        try:
            while data:
                data = data[os.pwrite(f.fileno(), data, total - len(data)):]
        except OSError as exc:
            raise _write_error(bucket_path, exc) from exc
    os.replace(bucket_path, out_path)
    return count
