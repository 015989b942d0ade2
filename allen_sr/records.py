"""Build a tile dataset: lossless raw tiles in shuffled, atomically written TFRecord shards.

Layout in `data_dir` for a dataset prefix P (tensor2tensor's naming, so t2t reads it as is):
  P-train-00000-of-00004 ...   shuffled train shards
  P-dev-00000-of-00001         dev shards (dev images never share an image with train)
  P-stats.json                 per-channel mean/std of the train tiles (0-255), for normalization
  P-info.json                  written last: what was built from what; its presence means complete

Tiles are stored as raw uint8 bytes (`image/format` = "raw", `image/height`/`image/width` give
the shape): lossless, and ten times faster to write than PNG.

The build is a two-pass external shuffle run by worker processes (one per core), with no
TensorFlow anywhere (records are framed as TFRecords by hand, CRC32C from google-crc32c):

1. tiling: each worker reads an image, keeps its tissue tiles, serializes them as framed
   tf.Example records, sends each record to a random bucket (one bucket per output shard; the
   random stream is seeded by the image id, so the result does not depend on which worker ran
   which image) and appends them to the bucket's file, one write per image and bucket (appends
   are atomic, so workers share the files; where each write landed is recorded). The main
   process receives only counts, a histogram and where each image's records went;
2. shuffling: one worker per shard reads the bucket's records in input-image order, shuffles
   them with a seed of its own into a buffer and writes them back over the bucket file, which
   becomes the shard. Pass 2 copies bytes; nothing is re-encoded.

Overwriting the bucket file in place, rather than writing a second copy, halves the page cache
the build dirties. On a VM that backs guest memory lazily and takes freed memory back at once
(free page reporting, as on the machines this was measured on) every fresh page costs ~30x a
reused one, and the second copy was a third of the build's time.

Memory stays bounded by one image per worker in pass 1 and one shard per worker in pass 2
(TILES_PER_SHARD, ~25 MB).
Everything is written under `data_dir/.allen_sr_tmp/` (outside t2t's `P-train*` glob) and renamed
into place only when every shard of the run is finished; a killed run leaves no partial shard
under a final name, and a rerun rebuilds everything.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import gc
import hashlib
import json
import logging
import math
import mmap
import os
import random
import shutil
import struct
import tempfile
import time
import warnings
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field

import google_crc32c
import numpy as np
from PIL import Image

from allen_sr import tiles as tiling
from allen_sr.fileio import write_json_atomic

log = logging.getLogger(__name__)

TILES_PER_SHARD = 2_000  # ~25 MB of raw 64x64x3 tiles per shard
SEGMENT_BYTES = 16 << 20  # at most this much of one image's records per append (one write)
TMP_DIRNAME = ".allen_sr_tmp"


@dataclass
class DatagenSummary:
    """What a dataset build read, kept and skipped (printed at the end and saved in P-info.json)."""

    images_read: int = 0
    tiles_kept: dict = field(default_factory=lambda: {"train": 0, "dev": 0})
    tiles_rejected: int = 0
    skipped: list = field(default_factory=list)  # [(file, reason)]
    images: dict = field(default_factory=lambda: {"train": [], "dev": []})

    def report(self) -> str:
        lines = [
            f"images read: {self.images_read} (train {len(self.images['train'])}, dev {len(self.images['dev'])})",
            f"tiles kept: train {self.tiles_kept['train']}, dev {self.tiles_kept['dev']}; "
            f"rejected as background: {self.tiles_rejected}",
            f"files skipped: {len(self.skipped)}",
        ]
        lines += [f"  - {reason}" for _, reason in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------- record encoding


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
        _feature_entry(b"image/source", _bytes_feature(source.encode("utf-8"))),
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

    Encoded by hand (the Example wire format is five nested length-delimited fields) from
    cached pieces: the tiling workers stay free of TensorFlow and a record costs ~2 us instead
    of ~30 us through tf.train.Example. Tests parse the result with tf.train.Example.
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


def _framed_tile_parts(tile: np.ndarray, source: str, top: int, left: int) -> list[bytes]:
    """tfrecord_frame(tile_example(...)) as pieces, without joining the pixels twice."""
    return _framed(_example_parts(tile, source, top, left))


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


def _write_error(path: str, exc: OSError) -> OSError:
    """`exc` with the file and what to do in its message (os.write's errors name no file)."""
    return OSError(exc.errno, f"datagen could not write {path}: {exc.strerror or exc}; make room "
                   "(disk space, quota, file size limit) or choose another --data_dir, then run "
                   "datagen again (the previous dataset, if any, is untouched)")


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


# --------------------------------------------------------------------------- pass 1: tiling


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


def _image_rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def tile_image_to_buckets(index: int, path: str, size: int, n_buckets: int, bucket_prefix: str,
                          seed: int) -> ImageTiles:
    """Pass 1 for one image (runs in a worker): tile, filter, frame and append to buckets.

    All workers append to `<bucket_prefix>-<bucket>`, each write one whole segment of at most
    SEGMENT_BYTES (joined in this worker's heap, which is reused from image to image).
    """
    key = tiling.image_id(path)
    try:
        image = tiling.load_image(path, size)
    except tiling.ImageSkipped as exc:
        return ImageTiles(index, path, key, 0, 0, None, error=str(exc))
    kept, positions, rejected = tiling.tissue_tiles(image, size)
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
            data = b"".join([part for i in chunk for part in _framed_tile_parts(kept[i], key, *positions[i])])
            offset = append_segment(bucket_path, data)
            result.segments.append((int(bucket), Segment(index, bucket_path, offset, len(data), len(chunk))))
    return result


# --------------------------------------------------------------------------- pass 2: shuffling


_shuffle_buffer = bytearray()  # pass 2's buffer, kept by each worker from shard to shard


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


# --------------------------------------------------------------------------- the build


class _Serial(Executor):
    """Runs submitted calls at once, in this process (workers=1, or no fork available)."""

    def submit(self, fn, /, *args, **kwargs):
        from concurrent.futures import Future

        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller via result()
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        global _shuffle_buffer
        _shuffle_buffer = bytearray()  # pass 2's buffer is a worker's; the main process drops it


def _executor(workers: int) -> Executor:
    """`workers` forked processes, or the calling process alone.

    Fork, not spawn: spawn re-imports the caller's __main__, which breaks scripts and notebooks
    without a main guard. The children run only NumPy/Pillow code, never TensorFlow, so forking a
    process that has TensorFlow loaded is safe here. Without fork (not Linux/macOS), run serially.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return _Serial()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker, initargs=(os.getpid(),))


@contextlib.contextmanager
def _frozen_gc():
    """Keep the parent's objects out of the workers' garbage collections while they run.

    A forked worker shares the parent's memory copy-on-write; a garbage collection walking the
    parent's objects (hundreds of MB once TensorFlow is imported) would write to every page it
    visits and copy them all. gc.freeze() moves the parent's objects out of the collector's way
    before the pool forks.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _init_worker(parent: int) -> None:
    """Worker initializer: end this worker when the build's process dies (SIGKILL included).

    Orphaned workers would go on appending to the bucket files of a dead build while its rerun
    deletes that build's work folder. Linux delivers SIGKILL to the worker when its parent exits
    (prctl PR_SET_PDEATHSIG); elsewhere the worker only checks once, at start.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        # glibc serves allocations above 128 kB (an image, a strip's temporaries) with fresh
        # mmap()s and unmaps them when freed, so every image faults its memory in again. Keep
        # blocks up to 32 MB in the heap and freed memory mapped: ~30% less system time.
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 * 2**20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not Linux / not glibc
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _in_order(futures, bar):
    """Results of `futures` in submission order, advancing `bar` as each finishes."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        bar.update(len(done))
    return [f.result() for f in futures]


@contextlib.contextmanager
def _cancel_on_error(pool: Executor):
    """On an error (disk full, Ctrl-C), drop queued work instead of finishing it first."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def _shard_names(prefix: str, split: str, n: int) -> list[str]:
    return [f"{prefix}-{split}-{k:05d}-of-{n:05d}" for k in range(n)]


def _estimate_tiles(paths: list[str], size: int) -> int:
    """Upper bound on grid tiles from image headers only (cheap), to size the shard count."""
    total = 0
    for p in paths:
        try:
            with Image.open(p) as im:
                total += (im.size[0] // size) * (im.size[1] // size)
        except Exception:  # unreadable files are reported when they are really read
            continue
    return total


def _inputs_fingerprint(paths: list[str], params: dict) -> dict:
    files = {}
    for p in paths:
        st = os.stat(p)
        files[os.path.basename(p)] = [st.st_size, int(st.st_mtime)]
    return {"params": params, "files": files}


def is_remote(path: str) -> bool:
    """True for a URL such as gs://bucket/dir or ram://dir (TensorFlow's filesystems)."""
    return "://" in path


def _read_json(path: str) -> dict:
    """A JSON file, local or remote (remote through tf.io.gfile); OSError when missing."""
    if is_remote(path):
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(path)
        return json.loads(tf.io.gfile.GFile(path, "r").read())
    with open(path) as f:
        return json.load(f)


def dataset_complete(data_dir: str, prefix: str, fingerprint: dict) -> bool:
    """True when P-info.json exists, matches these inputs and all its shards are present."""
    try:
        info = _read_json(f"{data_dir.rstrip('/')}/{prefix}-info.json")
    except (OSError, ValueError):
        return False
    if info.get("fingerprint") != fingerprint:
        return False
    if is_remote(data_dir):
        import tensorflow as tf

        exists = tf.io.gfile.exists
    else:
        exists = os.path.exists
    return all(exists(f"{data_dir.rstrip('/')}/{s}") for s in info.get("shards", []))


def _upload(local_dir: str, data_dir: str, prefix: str) -> None:
    """Publish the dataset built in `local_dir` to a remote `data_dir` (gs://...), info last.

    The old info goes first, so an interrupted upload reads as incomplete; shards of an older
    build that this one does not have are removed.
    """
    import tensorflow as tf
    from tqdm import tqdm

    gfile, base = tf.io.gfile, data_dir.rstrip("/")
    info = _read_json(os.path.join(local_dir, f"{prefix}-info.json"))
    gfile.makedirs(base)
    if gfile.exists(f"{base}/{prefix}-info.json"):
        gfile.remove(f"{base}/{prefix}-info.json")
    for name in tqdm(info["shards"], desc=f"uploading to {base}", unit="shard"):
        gfile.copy(os.path.join(local_dir, name), f"{base}/{name}", overwrite=True)
    keep = set(info["shards"])
    for path in gfile.glob(f"{base}/{prefix}-train-*") + gfile.glob(f"{base}/{prefix}-dev-*"):
        if path.rsplit("/", 1)[-1] not in keep:
            gfile.remove(path)
    for name in (f"{prefix}-stats.json", f"{prefix}-info.json"):
        if os.path.exists(os.path.join(local_dir, name)):
            gfile.copy(os.path.join(local_dir, name), f"{base}/{name}", overwrite=True)


def _stats(histogram: np.ndarray) -> dict | None:
    count = int(histogram[0].sum())
    if not count:
        return None
    values = np.arange(256, dtype=np.float64)
    mean = histogram @ values / count
    std = np.sqrt(np.maximum(histogram @ values ** 2 / count - mean ** 2, 0))
    return {"mean": mean.round(4).tolist(), "std": std.round(4).tolist(),
            "pixels": count, "scale": "0-255, RGB, train tiles"}


def build_tile_dataset(image_paths: list[str], data_dir: str, prefix: str, *,
                       dev_fraction: float = 0.1, size: int = tiling.TILE_SIZE,
                       seed: int = 1234, force: bool = False,
                       tiles_per_shard: int = TILES_PER_SHARD,
                       workers: int | None = None) -> DatagenSummary | None:
    """Tile `image_paths` into shuffled train/dev TFRecord shards under `data_dir`.

    `data_dir` may be remote (gs://...): the dataset is then built in a local temporary folder
    (it needs the local disk space) and uploaded through tf.io.gfile, info last.
    Returns the summary, or None when an identical complete dataset already exists (and not
    `force`). `workers` processes tile and shuffle (default: one per core); the output is the
    same for any number of workers.
    """
    from tqdm import tqdm

    params = {"size": size, "dev_fraction": dev_fraction, "seed": seed,
              "tissue": [tiling.TISSUE_MAX_MEAN, tiling.TISSUE_MIN_SPREAD, tiling.TISSUE_MIN_FRACTION]}
    fingerprint = _inputs_fingerprint(image_paths, params)
    if not force and dataset_complete(data_dir, prefix, fingerprint):
        log.info("dataset %s in %s is complete and up to date; skipping", prefix, data_dir)
        return None
    if is_remote(data_dir):
        # Build in a local staging folder, then upload: the workers write plain files.
        staging = tempfile.mkdtemp(prefix="allen_sr_datagen_")
        try:
            summary = build_tile_dataset(image_paths, staging, prefix, dev_fraction=dev_fraction,
                                         size=size, seed=seed, force=True,
                                         tiles_per_shard=tiles_per_shard, workers=workers)
            _upload(staging, data_dir, prefix)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return summary
    os.makedirs(data_dir, exist_ok=True)

    by_split = {"train": [], "dev": []}
    for p in image_paths:
        by_split[tiling.split_of(tiling.image_id(p), dev_fraction)].append(p)
    n_shards = {s: max(1, math.ceil(_estimate_tiles(ps, size) * 0.5 / tiles_per_shard))
                for s, ps in by_split.items()}
    ordered = [(split, p) for split, ps in by_split.items() for p in ps]

    _remove_stale_tmp(data_dir, prefix)
    tmp_root = os.path.join(data_dir, TMP_DIRNAME, f"{prefix}-{os.getpid()}-{int(time.time())}")
    os.makedirs(tmp_root)
    summary = DatagenSummary()
    histogram = np.zeros((3, 256), np.int64)
    segments = {(s, k): [] for s in by_split for k in range(n_shards[s])}
    try:
        with _frozen_gc(), _executor(workers or os.cpu_count() or 1) as pool, _cancel_on_error(pool):
            futures = [pool.submit(tile_image_to_buckets, i, p, size, n_shards[split],
                                   os.path.join(tmp_root, f"bucket-{split}"), seed)
                       for i, (split, p) in enumerate(ordered)]
            with tqdm(total=len(futures), desc=f"tiling {prefix}", unit="img") as bar:
                results = _in_order(futures, bar)
            for (split, _), result in zip(ordered, results):
                if result.error:
                    warnings.warn(result.error)
                    summary.skipped.append((result.path, result.error))
                    continue
                summary.images_read += 1
                summary.images[split].append(result.key)
                summary.tiles_rejected += result.rejected
                summary.tiles_kept[split] += result.kept
                if split == "train":
                    histogram += result.histogram
                for bucket, seg in result.segments:
                    segments[split, bucket].append(seg)

            names = {s: _shard_names(prefix, s, n_shards[s]) for s in by_split}
            futures = [pool.submit(write_shard, segments[s, k], os.path.join(tmp_root, name),
                                   f"{seed}:{s}:{k}")
                       for s in by_split for k, name in enumerate(names[s])]
            with tqdm(total=len(futures), desc=f"shuffling {prefix}", unit="shard") as bar:
                written = _in_order(futures, bar)
        if sum(written) != summary.tiles_kept["train"] + summary.tiles_kept["dev"]:
            raise RuntimeError(f"datagen wrote {sum(written)} records for {summary.tiles_kept} tiles kept")
        final_names = names["train"] + names["dev"]
        stats = _stats(histogram)

        # Commit: drop the old dataset's info first (so an interrupted commit reads as
        # incomplete), move the new shards in, remove stale shards, then write stats and info.
        info_path = os.path.join(data_dir, f"{prefix}-info.json")
        if os.path.exists(info_path):
            os.remove(info_path)
        for name in final_names:
            os.replace(os.path.join(tmp_root, name), os.path.join(data_dir, name))
        keep = set(final_names)
        for name in os.listdir(data_dir):
            if (name.startswith(f"{prefix}-train-") or name.startswith(f"{prefix}-dev-")) and name not in keep:
                os.remove(os.path.join(data_dir, name))
        if stats is not None:
            write_json_atomic(stats, os.path.join(data_dir, f"{prefix}-stats.json"))
        info = {"prefix": prefix, "shards": final_names, "fingerprint": fingerprint,
                "summary": asdict(summary)}
        write_json_atomic(info, info_path)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        parent = os.path.dirname(tmp_root)
        if os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
    return summary


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(data_dir: str, prefix: str) -> None:
    """Delete work folders left by killed builds of this dataset (their process is gone)."""
    parent = os.path.join(data_dir, TMP_DIRNAME)
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        rest = name[len(prefix) + 1:] if name.startswith(prefix + "-") else ""
        pid = rest.split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            log.info("removing %s left by an interrupted datagen", name)
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def read_stats(data_dir: str, prefix: str) -> dict:
    """The per-channel statistics written by datagen, or a clear error saying how to get them."""
    path = f"{data_dir.rstrip('/')}/{prefix}-stats.json"
    try:
        return _read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: normalization needs the statistics written by datagen; "
            f"run `allen-sr datagen` for this data_dir first") from None


# ITU-R 601 luma, as tf.image.rgb_to_grayscale (what the greyscale problems train on).
LUMA = np.array([0.2989, 0.5870, 0.1140])


def normalization_stats(hparams, channels: int, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in 0-255 of a problem's training tiles, for `normalize_inputs`.

    Reads `<hparams.data_dir>/<dataset>-stats.json` (t2t-trainer sets hparams.problem and
    data_dir); errors name `model`, the missing piece and how to get it.
    """
    problem = getattr(hparams, "problem", None)
    data_dir = getattr(hparams, "data_dir", None)
    if problem is None or not data_dir:
        raise ValueError(
            f"{model}: normalize_inputs=True reads the dataset statistics from "
            "<data_dir>/<dataset>-stats.json, but the hparams have no "
            f"{'problem' if problem is None else 'data_dir'} (t2t-trainer sets both from "
            "--problem and --data_dir); pass them, or train with --hparams=normalize_inputs=False")
    stats = read_stats(data_dir, problem.dataset_filename())
    mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
    if channels == 1 and mean.shape == (3,):
        # Greyscale problems train on the luma of the RGB tiles the stats describe: the luma
        # mean is exact; the weighted std is an upper bound, good enough for scaling.
        mean, std = np.array([mean @ LUMA]), np.array([std @ LUMA])
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(f"{model}: the statistics in {data_dir} have {mean.shape[0]} "
                         f"channels, the problem has {channels}")
    return mean.astype(np.float32), np.maximum(std, 1.0).astype(np.float32)
