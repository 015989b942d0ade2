"""Build a tile dataset: lossless raw tiles in shuffled, atomically committed TFRecord shards.

Layout in `data_dir` for a dataset prefix P (tensor2tensor's naming, so t2t reads it as is):
  P-train-00000-of-00004 ...   shuffled train shards
  P-dev-00000-of-00001         dev shards (dev images never share an image with train)
  P-stats.json                 per-channel mean/std of the train tiles (0-255), for normalization
  P-info.json                  written last: what was built from what, each shard's size and sha256;
                               its presence (with every shard as it records) means complete

Tiles are stored as raw uint8 bytes (`image/format` = "raw"; allen_sr.data.tfrecord). The build
is a two-pass external shuffle run by worker processes (allen_sr.data.buckets), with no
TensorFlow. Everything is written under `data_dir/.allen_sr_tmp/` (outside t2t's `P-train*` glob)
and renamed into place only when every shard of the run is finished; a killed run leaves no
partial shard under a final name and no P-info.json, and a rerun rebuilds everything. Memory stays
bounded by one image per worker in pass 1 and one shard per worker in pass 2 (TILES_PER_SHARD).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from allen_sr.data import buckets, images, tiles
from allen_sr.data.paths import exists, is_remote, read_json
from allen_sr.data.stats import channel_stats
from allen_sr.data.workers import cancel_on_error, executor, frozen_gc, in_order
from allen_sr.fileio import remove_orphans, remove_stale_temp_files, write_json_atomic

__all__ = ["TILES_PER_SHARD", "TMP_DIRNAME", "DatagenSummary", "inputs_fingerprint",
           "dataset_complete", "shard_trouble", "build_tile_dataset"]

log = logging.getLogger(__name__)

TILES_PER_SHARD = 2_000  # ~25 MB of raw 64x64x3 tiles per shard
TMP_DIRNAME = ".allen_sr_tmp"


@dataclass
class DatagenSummary:
    """What a dataset build read, kept and skipped (printed at the end and saved in P-info.json)."""

    images_read: int = 0
    tiles_kept: dict = field(default_factory=lambda: {"train": 0, "dev": 0})
    tiles_rejected: int = 0
    skipped: list = field(default_factory=list)  # [(file, reason)]
    images: dict = field(default_factory=lambda: {"train": [], "dev": []})
    duplicates: list = field(default_factory=list)  # [[split, file, copy, ...]] of identical files

    def report(self) -> str:
        lines = [
            f"images read: {self.images_read} (train {len(self.images['train'])}, dev {len(self.images['dev'])})",
            f"tiles kept: train {self.tiles_kept['train']}, dev {self.tiles_kept['dev']}; "
            f"rejected as background: {self.tiles_rejected}",
        ]
        lines += self.skipped_report().splitlines()
        lines += [f"identical files, all in {split} (one split, so dev holds no copy of a train image): "
                  + ", ".join(names) for split, *names in self.duplicates]
        return "\n".join(lines)

    def skipped_report(self) -> str:
        """The files skipped, each with why (also said when a rerun finds the dataset up to date)."""
        return "\n".join([f"files skipped: {len(self.skipped)}"] + [f"  - {reason}" for _, reason in self.skipped])


def _shard_names(prefix: str, split: str, n: int) -> list[str]:
    return [f"{prefix}-{split}-{k:05d}-of-{n:05d}" for k in range(n)]


def _estimate_tiles(paths: list[str], size: int) -> int:
    """Upper bound on grid tiles from image headers only (cheap), to size the shard count."""
    total = 0
    for p in paths:
        try:
            width, height = images.image_size(p)
        except Exception:  # unreadable files are reported when they are really read
            continue
        total += (width // size) * (height // size)
    return total


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def inputs_fingerprint(paths: list[str], params: dict) -> dict:
    """What a dataset is built from: the build parameters and each input's size and sha256.

    Content, not modification time: an image replaced in place keeps its name, size and
    possibly its mtime. A file that cannot be read (a broken link) is [None, None]: reading it
    names it as skipped.
    """
    return {"params": params, "files": {os.path.basename(p): _size_and_sha256(p) for p in paths}}


def _size_and_sha256(path: str) -> list:
    try:
        return [os.path.getsize(path), _sha256(path)]
    except OSError:
        return [None, None]


def dataset_complete(data_dir: str, prefix: str, fingerprint: dict) -> bool:
    """True when P-info.json exists, matches these inputs and all its shards are as it records.

    A shard that differs from its recorded size (or, in a local folder, its sha256) is named in a
    warning and the dataset rebuilt; so is a dataset whose P-info.json records no shard sizes
    (written before allen-sr recorded them), once.
    """
    base = data_dir.rstrip("/")
    try:
        info = read_json(f"{base}/{prefix}-info.json")
    except (OSError, ValueError):
        return False
    if info.get("fingerprint") != fingerprint:
        return False
    if not all(exists(f"{base}/{s}") for s in info.get("shards", [])):
        return False
    trouble = shard_trouble(base, info)
    if trouble:
        warnings.warn(f"{trouble}: rebuilding the dataset")
    return trouble is None


def _shard_sums(folder: str, names: list[str]) -> dict:
    """{shard name: [size, sha256]} of the shards ``names`` in a local ``folder``."""
    return {name: [os.path.getsize(os.path.join(folder, name)), _sha256(os.path.join(folder, name))]
            for name in names}


def shard_trouble(data_dir: str, info: dict) -> str | None:
    """Why the shards in ``data_dir`` are not the ones P-info.json ``info`` records, or None.

    Sizes are compared everywhere, the sha256 of each shard only in a local folder (a remote one
    would be downloaded for it).
    """
    sums = info.get("shard_sums")
    if sums is None:
        return (f"{data_dir}/{info.get('prefix', '')}-info.json was written by an older allen-sr and records no "
                "shard sizes to check the shards against")
    for name, (size, digest) in sums.items():
        path = f"{data_dir.rstrip('/')}/{name}"
        if is_remote(path):
            import tensorflow as tf

            actual, actual_digest = tf.io.gfile.stat(path).length, digest
        else:
            actual = os.path.getsize(path)
            actual_digest = _sha256(path) if actual == size else digest
        if actual != size:
            return f"shard {path} holds {actual} bytes, not the {size} datagen wrote (truncated or replaced)"
        if actual_digest != digest:
            return f"shard {path} does not hold the bytes datagen wrote (its sha256 differs: corrupted)"
    return None


def stored_summary(data_dir: str, prefix: str) -> DatagenSummary:
    """The summary a complete dataset's P-info.json keeps of its build."""
    return DatagenSummary(**read_json(f"{data_dir.rstrip('/')}/{prefix}-info.json")["summary"])


def _upload(local_dir: str, data_dir: str, prefix: str) -> None:
    """Publish the dataset built in `local_dir` to a remote `data_dir` (gs://...), info last.

    The old info goes first, so an interrupted upload reads as incomplete; shards of an older
    build that this one does not have are removed.
    """
    import tensorflow as tf
    from tqdm import tqdm

    gfile, base = tf.io.gfile, data_dir.rstrip("/")
    info = read_json(os.path.join(local_dir, f"{prefix}-info.json"))
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


def build_tile_dataset(image_paths: list[str], data_dir: str, prefix: str, *,
                       dev_fraction: float = 0.1, size: int = tiles.TILE_SIZE,
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
    params = {"size": size, "dev_fraction": dev_fraction, "seed": seed,
              "tissue": [tiles.TISSUE_MAX_MEAN, tiles.TISSUE_MIN_SPREAD, tiles.TISSUE_MIN_FRACTION]}
    fingerprint = inputs_fingerprint(image_paths, params)
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
    _remove_stale_tmp(data_dir, prefix)
    tmp_root = os.path.join(data_dir, TMP_DIRNAME, f"{prefix}-{os.getpid()}-{int(time.time())}")
    os.makedirs(tmp_root)
    try:
        digests = [fingerprint["files"][os.path.basename(p)][1] for p in image_paths]
        summary, shard_names, stats = _build(image_paths, digests, tmp_root, prefix, dev_fraction, size,
                                             seed, tiles_per_shard, workers or os.cpu_count() or 1)
        _commit(tmp_root, data_dir, prefix, shard_names, stats,
                {"prefix": prefix, "shards": shard_names, "fingerprint": fingerprint,
                 "shard_sums": _shard_sums(tmp_root, shard_names), "summary": asdict(summary)})
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        parent = os.path.dirname(tmp_root)
        if os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
    return summary


def split_images(image_paths: list[str], digests: list[str], dev_fraction: float) -> tuple[dict, list]:
    """({"train": paths, "dev": paths}, duplicates): each image's split from a hash of its name, but
    files of identical content (sha256 ``digests``) all in the split of the first of them by name,
    so that no copy of a dev image is trained on. duplicates: [[split, name, name, ...]]."""
    first: dict[str, str] = {}
    copies: dict[str, list[str]] = {}
    digests = [digest or f"unreadable:{p}" for p, digest in zip(image_paths, digests)]
    for p, digest in sorted(zip(image_paths, digests), key=lambda pd: images.image_id(pd[0])):
        first.setdefault(digest, images.image_id(p))
        copies.setdefault(digest, []).append(os.path.basename(p))
    by_split = {"train": [], "dev": []}
    for p, digest in zip(image_paths, digests):
        by_split[tiles.split_of(first[digest], dev_fraction)].append(p)
    duplicates = [[tiles.split_of(first[d], dev_fraction), *names] for d, names in copies.items() if len(names) > 1]
    return by_split, duplicates


def _build(image_paths: list[str], digests: list[str], tmp_root: str, prefix: str, dev_fraction: float,
           size: int, seed: int, tiles_per_shard: int,
           workers: int) -> tuple[DatagenSummary, list[str], dict | None]:
    """Both passes into `tmp_root`: (summary, shard names train then dev, train stats)."""
    from tqdm import tqdm

    by_split, duplicates = split_images(image_paths, digests, dev_fraction)
    n_shards = {s: max(1, math.ceil(_estimate_tiles(ps, size) * 0.5 / tiles_per_shard))
                for s, ps in by_split.items()}
    ordered = [(split, p) for split, ps in by_split.items() for p in ps]
    summary = DatagenSummary()
    histogram = np.zeros((3, 256), np.int64)
    segments = {(s, k): [] for s in by_split for k in range(n_shards[s])}
    try:
        with frozen_gc(), executor(workers) as pool, cancel_on_error(pool):
            futures = [pool.submit(buckets.tile_image_to_buckets, i, p, size, n_shards[split],
                                   os.path.join(tmp_root, f"bucket-{split}"), seed)
                       for i, (split, p) in enumerate(ordered)]
            with tqdm(total=len(futures), desc=f"tiling {prefix}", unit="img") as bar:
                results = in_order(futures, bar)
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
            summary.duplicates = _readable_duplicates(duplicates, summary.skipped)

            names = {s: _shard_names(prefix, s, n_shards[s]) for s in by_split}
            futures = [pool.submit(buckets.write_shard, segments[s, k], os.path.join(tmp_root, name),
                                   f"{seed}:{s}:{k}")
                       for s in by_split for k, name in enumerate(names[s])]
            with tqdm(total=len(futures), desc=f"shuffling {prefix}", unit="shard") as bar:
                written = in_order(futures, bar)
    finally:
        buckets.release_shuffle_buffer()  # a serial build shuffled in this process
    if sum(written) != summary.tiles_kept["train"] + summary.tiles_kept["dev"]:
        raise RuntimeError(f"datagen wrote {sum(written)} records for {summary.tiles_kept} tiles kept")
    return summary, names["train"] + names["dev"], channel_stats(histogram)


def _readable_duplicates(duplicates: list, skipped: list) -> list:
    """The groups of identical files without the files that were skipped as unreadable (their
    hashes were taken before they were read), each group still holding two files."""
    gone = {os.path.basename(path) for path, _ in skipped}
    groups = [[split, *(n for n in names if n not in gone)] for split, *names in duplicates]
    return [group for group in groups if len(group) > 2]


def _commit(tmp_root: str, data_dir: str, prefix: str, shard_names: list[str],
            stats: dict | None, info: dict) -> None:
    """Move the finished shards into `data_dir`, then write stats and, last, P-info.json.

    The old dataset's info goes first, so an interrupted commit reads as incomplete; shards of
    an older build that this one does not have are removed.
    """
    info_path = os.path.join(data_dir, f"{prefix}-info.json")
    if os.path.exists(info_path):
        os.remove(info_path)
    for name in shard_names:
        os.replace(os.path.join(tmp_root, name), os.path.join(data_dir, name))
    keep = set(shard_names)
    for name in os.listdir(data_dir):
        if (name.startswith(f"{prefix}-train-") or name.startswith(f"{prefix}-dev-")) and name not in keep:
            os.remove(os.path.join(data_dir, name))
    if stats is not None:
        write_json_atomic(stats, os.path.join(data_dir, f"{prefix}-stats.json"))
    write_json_atomic(info, info_path)


def _remove_stale_tmp(data_dir: str, prefix: str) -> None:
    """Delete work folders and temporary files left by killed builds of this dataset."""
    for name in remove_stale_temp_files(data_dir, prefix):
        log.info("removed %s left by an interrupted datagen", name)
    for name in remove_orphans(os.path.join(data_dir, TMP_DIRNAME), rf"{re.escape(prefix)}-(?P<pid>\d+)(-.*)?"):
        log.info("removed %s left by an interrupted datagen", name)
