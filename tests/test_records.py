"""Dataset builds: lossless shuffled shards, split by image, stats, atomic and resumable datagen,
and what tensor2tensor's own input pipeline reads back from them."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from allen_sr import records, tiles

PREFIX = "img2img_local_dim8to32"


def read_records(path):
    import tensorflow as tf

    out = []
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        ex = tf.train.Example.FromString(raw)
        f = ex.features.feature
        out.append({
            "pixels": np.frombuffer(f["image/encoded"].bytes_list.value[0], np.uint8).reshape(
                f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0],
                f["image/channels"].int64_list.value[0]),
            "format": f["image/format"].bytes_list.value[0],
            "source": f["image/source"].bytes_list.value[0].decode(),
            "top": f["image/top"].int64_list.value[0],
            "left": f["image/left"].int64_list.value[0],
        })
    return out


def shard_paths(data_dir, split):
    return sorted(os.path.join(data_dir, n) for n in os.listdir(data_dir) if n.startswith(f"{PREFIX}-{split}-"))


def test_build_writes_lossless_shuffled_split_records(image_folder, tmp_path):
    data_dir = str(tmp_path / "data")
    paths = tiles.list_images(str(image_folder))
    summary = records.build_tile_dataset(paths, data_dir, PREFIX, dev_fraction=0.3, tiles_per_shard=40)
    assert summary.images_read == 10 and not summary.skipped
    sources = {}
    for split in ("train", "dev"):
        shards = shard_paths(data_dir, split)
        assert shards, split
        n = len(shards)
        assert [os.path.basename(s) for s in shards] == [f"{PREFIX}-{split}-{k:05d}-of-{n:05d}" for k in range(n)]
        recs = [r for s in shards for r in read_records(s)]
        assert len(recs) == summary.tiles_kept[split]
        sources[split] = {r["source"] for r in recs}
        for r in recs[:20]:  # lossless: the raw bytes are exactly the source pixels
            assert r["format"] == b"raw"
            tile = r["pixels"]
            original = tiles.load_image(str(image_folder / f"{r['source']}.png"))
            np.testing.assert_array_equal(tile, original[r["top"]:r["top"] + 64, r["left"]:r["left"] + 64])
        if split == "train":
            order = [(r["source"], r["top"], r["left"]) for r in read_records(shards[0])]
            assert order != sorted(order)  # really shuffled, not in image/raster order
    assert not sources["train"] & sources["dev"]
    assert sources["dev"] == {tiles.image_id(p) for p in paths if tiles.split_of(tiles.image_id(p), 0.3) == "dev"}
    assert len(shard_paths(data_dir, "train")) > 1  # shard count scales with the data

    stats = json.load(open(os.path.join(data_dir, f"{PREFIX}-stats.json")))
    train_pixels = np.concatenate([
        tiles.tissue_tiles(tiles.load_image(p))[0].reshape(-1, 3)
        for p in paths if tiles.split_of(tiles.image_id(p), 0.3) == "train"])
    np.testing.assert_allclose(stats["mean"], train_pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(stats["std"], train_pixels.std(0), atol=1e-3)
    assert not os.path.exists(os.path.join(data_dir, records.TMP_DIRNAME))


def test_hand_encoded_example_parses_as_tf_example():
    import tensorflow as tf

    tile = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ex = tf.train.Example.FromString(records.tile_example(tile, "slide_ü", 2**40, 300))
    f = ex.features.feature
    assert f["image/encoded"].bytes_list.value == [tile.tobytes()]
    assert f["image/format"].bytes_list.value == [b"raw"]
    assert [f[k].int64_list.value[0] for k in ("image/height", "image/width", "image/channels", "image/top", "image/left")] == [64, 64, 3, 2**40, 300]
    assert f["image/source"].bytes_list.value[0].decode() == "slide_ü"
    assert len(f) == 8


def test_hand_framed_records_are_tfrecords_with_checked_crcs(tmp_path):
    """Our TFRecord framing (length, masked CRC32C, data, masked CRC32C) is what TF reads, and
    TF verifies the CRCs: a flipped byte is reported as data loss, not read back."""
    import tensorflow as tf

    payloads = [b"", b"x", os.urandom(300), os.urandom(70_000)]
    path = tmp_path / "framed.tfrecord"
    path.write_bytes(b"".join(records.tfrecord_frame(p) for p in payloads))
    assert list(tf.compat.v1.io.tf_record_iterator(str(path))) == payloads
    frames = records.split_frames(path.read_bytes(), len(payloads))
    assert [bytes(f[12:-4]) for f in frames] == payloads

    corrupt = bytearray(path.read_bytes())
    corrupt[len(records.tfrecord_frame(payloads[0])) + 12] ^= 1  # first data byte of record 2
    path.write_bytes(bytes(corrupt))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    with pytest.raises(ValueError, match="truncated record"):
        records.split_frames(bytes(corrupt[:-5]), len(payloads))


def test_parallel_and_serial_builds_write_the_same_records(image_folder, tmp_path, monkeypatch):
    """Same bytes whichever worker tiled which image, and whether an image's records went into a
    bucket file in one append or in many interleaved with the other worker's (a few tiles each)."""
    paths = tiles.list_images(str(image_folder))
    got = {}
    for workers, segment_bytes in ((1, records.SEGMENT_BYTES), (2, 3 * 64 * 64 * 3)):
        monkeypatch.setattr(records, "SEGMENT_BYTES", segment_bytes)  # forked workers inherit it
        data_dir = str(tmp_path / f"w{workers}")
        records.build_tile_dataset(paths, data_dir, PREFIX, workers=workers, tiles_per_shard=40)
        got[workers] = [open(p, "rb").read() for split in ("train", "dev") for p in shard_paths(data_dir, split)]
    assert got[1] == got[2] and len(got[1]) > 2  # several shards, each gathered from every worker


def test_rerun_skips_a_complete_dataset_and_rebuilds_when_inputs_change(image_folder, tmp_path):
    data_dir = str(tmp_path / "data")
    paths = tiles.list_images(str(image_folder))
    assert records.build_tile_dataset(paths, data_dir, PREFIX) is not None
    assert records.build_tile_dataset(paths, data_dir, PREFIX) is None
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(image_folder / "new.png")
    summary = records.build_tile_dataset(tiles.list_images(str(image_folder)), data_dir, PREFIX)
    assert summary is not None and summary.images_read == 11


def test_bad_files_are_skipped_and_reported(image_folder, tmp_path):
    (image_folder / "zero.jpg").write_bytes(b"")
    (image_folder / "notes.png").write_text("not an image")
    data_dir = str(tmp_path / "data")
    with pytest.warns(UserWarning, match="zero.jpg"):
        summary = records.build_tile_dataset(tiles.list_images(str(image_folder)), data_dir, PREFIX)
    skipped = {os.path.basename(p) for p, _ in summary.skipped}
    assert skipped == {"zero.jpg", "notes.png"} and summary.images_read == 10
    assert "files skipped: 2" in summary.report() and "zero.jpg" in summary.report()


KILL_SCRIPT = """
import sys
from allen_sr import records, tiles
records.build_tile_dataset(tiles.list_images(sys.argv[1]), sys.argv[2], "%s", tiles_per_shard=200)
""" % PREFIX


@pytest.mark.slow
def test_killed_datagen_leaves_no_partial_shard_and_rerun_completes(tmp_path):
    from conftest import tissue_image

    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(40):
        Image.fromarray(tissue_image(512, 512, seed=k)).save(folder / f"img_{k:02d}.png")
    data_dir = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(folder), str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp_root = data_dir / records.TMP_DIRNAME
    deadline = time.time() + 120
    # Bucket files are opened before tiling starts: kill the build as soon as they exist.
    while time.time() < deadline and not (tmp_root.exists() and any(tmp_root.rglob("bucket-*"))):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "datagen finished before it could be killed mid-run"
    assert not list(data_dir.glob(f"{PREFIX}-train-*")), "a shard appeared under its final name mid-run"
    assert not (data_dir / f"{PREFIX}-info.json").exists()

    summary = records.build_tile_dataset(tiles.list_images(str(folder)), str(data_dir), PREFIX, tiles_per_shard=200)
    total = sum(len(read_records(p)) for split in ("train", "dev") for p in shard_paths(str(data_dir), split))
    assert total == summary.tiles_kept["train"] + summary.tiles_kept["dev"] > 0
    assert not tmp_root.exists()


FULL_DISK_SCRIPT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then an over-limit write fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # inherited by the workers
from allen_sr import records, tiles
records.build_tile_dataset(tiles.list_images(sys.argv[1]), sys.argv[2], "%s", force=True)
""" % PREFIX


def test_a_failed_write_names_the_file_and_keeps_the_previous_dataset(image_folder, tmp_path):
    """A write that fails mid-build (here: a file size limit, as a full disk would) ends datagen
    with an error naming the file and what to do, and leaves the complete dataset already in
    data_dir exactly as it was."""
    data_dir = tmp_path / "data"
    records.build_tile_dataset(tiles.list_images(str(image_folder)), str(data_dir), PREFIX)
    before = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(image_folder), str(data_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert re.search(r"datagen could not write \S+bucket-train-\d+: .*run datagen again", proc.stderr), proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()} == before
    assert not (data_dir / records.TMP_DIRNAME).exists()


def test_t2t_pipeline_reads_centre_crops_and_area_inputs(image_folder, tmp_path):
    """The registered problem reads our shards through t2t: dev targets are the centre 32x32 of a
    tile and inputs their rounded 8x8 area downsample."""
    import allen_sr.problems  # noqa: F401
    import tensorflow as tf
    from tensor2tensor.utils import registry, trainer_lib

    data_dir = str(tmp_path / "data")
    problem = registry.problem(PREFIX)
    problem.generate_data(data_dir, str(image_folder))
    hp = trainer_lib.create_hparams("img2img_allen_cpu_tiny", data_dir=data_dir, problem_name=PREFIX)
    ds = problem.dataset(tf.estimator.ModeKeys.EVAL, data_dir=data_dir, hparams=hp, shuffle_files=False)
    dev = {(r["top"], r["left"], r["source"]): r for s in shard_paths(data_dir, "dev") for r in read_records(s)}
    tiles_by_pixels = {r["pixels"][16:48, 16:48].tobytes() for r in dev.values()}
    n = 0
    for ex in ds.take(5).as_numpy_iterator():
        target, inputs = ex["targets"].astype(np.uint8), ex["inputs"].astype(np.uint8)
        assert target.shape == (32, 32, 3) and inputs.shape == (8, 8, 3)
        assert target.tobytes() in tiles_by_pixels
        np.testing.assert_array_equal(inputs, tiles.area_downsample(target, 4))
        n += 1
    assert n == 5
