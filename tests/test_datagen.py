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

from allen_sr.data import buckets, datagen, images, tiles
from conftest import REPO, tissue_image

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


def files(folder) -> dict:
    """Every entry of `folder` (not recursive): name -> bytes for files, None for folders."""
    return {p.name: p.read_bytes() if p.is_file() else None for p in sorted(folder.iterdir())}


def mixing(order: list[tuple[str, int, int]]) -> tuple[int, float, float]:
    """How well one shard's records are mixed: (images in it, fraction of neighbours from the same
    image, mean over images of the spread of their records' places, as a fraction of the shard)."""
    sources = [source for source, _, _ in order]
    same = sum(a == b for a, b in zip(sources, sources[1:])) / max(1, len(sources) - 1)
    spreads = []
    for source in set(sources):
        places = [i for i, s in enumerate(sources) if s == source]
        if len(places) > 1:
            spreads.append((places[-1] - places[0]) / (len(sources) - 1))
    return len(set(sources)), same, float(np.mean(spreads))


def test_build_writes_lossless_shuffled_split_records(image_folder, tmp_path):
    data_dir = str(tmp_path / "data")
    paths = images.list_images(str(image_folder))
    summary = datagen.build_tile_dataset(paths, data_dir, PREFIX, dev_fraction=0.3, tiles_per_shard=40)
    assert summary.images_read == 10 and not summary.skipped
    train_images = {images.image_id(p) for p in paths if tiles.split_of(images.image_id(p), 0.3) == "train"}
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
            original = images.load_image(str(image_folder / f"{r['source']}.png"))
            np.testing.assert_array_equal(tile, original[r["top"]:r["top"] + 64, r["left"]:r["left"] + 64])
    for shard in shard_paths(data_dir, "train"):
        # Really shuffled across images: every shard holds tiles of (nearly) every train image,
        # neighbours rarely come from one image (1 in 8 by chance; ~3 in 4 in image order), and
        # each image's tiles are spread over the shard, not bunched.
        n_images, same, spread = mixing([(r["source"], r["top"], r["left"]) for r in read_records(shard)])
        assert n_images >= len(train_images) - 1, (shard, n_images)
        assert same < 0.35, (shard, same)
        assert spread > 0.45, (shard, spread)
    assert not sources["train"] & sources["dev"]
    assert sources["dev"] == {images.image_id(p) for p in paths} - train_images
    assert len(shard_paths(data_dir, "train")) > 1  # shard count scales with the data

    stats = json.load(open(os.path.join(data_dir, f"{PREFIX}-stats.json")))
    train_pixels = np.concatenate([
        tiles.tissue_tiles(images.load_image(p))[0].reshape(-1, 3)
        for p in paths if images.image_id(p) in train_images])
    np.testing.assert_allclose(stats["mean"], train_pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(stats["std"], train_pixels.std(0), atol=1e-3)
    assert not os.path.exists(os.path.join(data_dir, datagen.TMP_DIRNAME))


def test_parallel_and_serial_builds_write_the_same_records(image_folder, tmp_path, monkeypatch):
    """Same bytes whichever worker tiled which image, and whether an image's records went into a
    bucket file in one append or in many interleaved with the other worker's (a few tiles each)."""
    paths = images.list_images(str(image_folder))
    got = {}
    for workers, segment_bytes in ((1, buckets.SEGMENT_BYTES), (2, 3 * 64 * 64 * 3)):
        monkeypatch.setattr(buckets, "SEGMENT_BYTES", segment_bytes)  # forked workers inherit it
        data_dir = str(tmp_path / f"w{workers}")
        datagen.build_tile_dataset(paths, data_dir, PREFIX, workers=workers, tiles_per_shard=40)
        got[workers] = [open(p, "rb").read() for split in ("train", "dev") for p in shard_paths(data_dir, split)]
    assert got[1] == got[2] and len(got[1]) > 2  # several shards, each gathered from every worker


def test_rerun_skips_a_complete_dataset_and_rebuilds_when_inputs_change(image_folder, tmp_path):
    data_dir = str(tmp_path / "data")
    paths = images.list_images(str(image_folder))
    assert datagen.build_tile_dataset(paths, data_dir, PREFIX) is not None
    assert datagen.build_tile_dataset(paths, data_dir, PREFIX) is None
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(image_folder / "new.png")
    summary = datagen.build_tile_dataset(images.list_images(str(image_folder)), data_dir, PREFIX)
    assert summary is not None and summary.images_read == 11


def test_a_rebuild_removes_the_temporary_files_a_killed_build_left(image_folder, tmp_path):
    """A build killed while writing its stats or info file leaves `.<prefix>-....<pid>.<hex>.tmp`
    (fileio's atomic write); the next build removes it, so the folder holds only the dataset."""
    import subprocess
    import sys

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = data_dir / f".{PREFIX}-stats.json.{dead}.0badcafe.tmp"
    stale.write_text("{")
    datagen.build_tile_dataset(images.list_images(str(image_folder)), str(data_dir), PREFIX)
    assert not stale.exists()
    assert all(not name.startswith(".") or name == datagen.TMP_DIRNAME for name in os.listdir(data_dir))


def test_an_input_edited_in_place_with_its_size_and_mtime_kept_is_rebuilt(tmp_path):
    """The fingerprint is the content: a slide overwritten in place by another of the same size,
    with its modification time set back, still triggers a rebuild that holds the new pixels."""
    folder = tmp_path / "images"
    folder.mkdir()
    path = folder / "slide.bmp"  # uncompressed: another image of the same shape has the same size
    Image.fromarray(tissue_image(192, 256, seed=1)).save(path)
    data_dir = str(tmp_path / "data")
    assert datagen.build_tile_dataset([str(path)], data_dir, PREFIX, dev_fraction=0) is not None
    assert datagen.build_tile_dataset([str(path)], data_dir, PREFIX, dev_fraction=0) is None

    before = os.stat(path)
    edited = tmp_path / "edited.bmp"
    Image.fromarray(tissue_image(192, 256, seed=2)).save(edited)
    assert edited.stat().st_size == before.st_size and edited.read_bytes() != path.read_bytes()
    with open(path, "r+b") as f:  # in place: same inode, same name
        f.write(edited.read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)

    assert datagen.build_tile_dataset([str(path)], data_dir, PREFIX, dev_fraction=0) is not None
    new_pixels = images.load_image(str(edited))
    recs = [r for s in shard_paths(data_dir, "train") for r in read_records(s)]
    assert recs
    for r in recs:
        np.testing.assert_array_equal(r["pixels"], new_pixels[r["top"]:r["top"] + 64, r["left"]:r["left"] + 64])


@pytest.mark.parametrize("damage", ["truncated", "same size", "old info"])
def test_a_damaged_shard_is_named_and_rebuilt(damage, image_folder, tmp_path):
    """A shard cut short or altered in place (same size) is not "complete and up to date": datagen
    names it and rebuilds; so does a dataset whose P-info.json records no shard sizes (older
    allen-sr), once. The rebuilt dataset is complete again."""
    data_dir = str(tmp_path / "data")
    paths = images.list_images(str(image_folder))
    datagen.build_tile_dataset(paths, data_dir, PREFIX, dev_fraction=0.3)
    shard = shard_paths(data_dir, "dev")[0]
    good = open(shard, "rb").read()
    info_path = os.path.join(data_dir, f"{PREFIX}-info.json")
    if damage == "truncated":
        os.truncate(shard, len(good) // 2)
        said = f"shard {shard} holds {len(good) // 2} bytes, not the {len(good)}"
    elif damage == "same size":
        with open(shard, "r+b") as f:
            f.seek(len(good) // 2)
            f.write(bytes(b ^ 0xFF for b in good[len(good) // 2:len(good) // 2 + 4]))
        said = f"shard {shard} does not hold the bytes datagen wrote"
    else:
        info = json.load(open(info_path))
        del info["shard_sums"]
        json.dump(info, open(info_path, "w"))
        said = "written by an older allen-sr and records no shard sizes"
    with pytest.warns(UserWarning, match=re.escape(said)):
        assert datagen.build_tile_dataset(paths, data_dir, PREFIX, dev_fraction=0.3) is not None
    assert open(shard, "rb").read() == good
    assert datagen.build_tile_dataset(paths, data_dir, PREFIX, dev_fraction=0.3) is None


def test_identical_files_go_to_one_split_and_are_named(image_folder, tmp_path):
    """Copies of one image under names whose hashes pick different splits all go to the split of
    the first name, so dev holds nothing trained on; other files keep the split of their name."""
    paths = images.list_images(str(image_folder))
    names = [f"copy_{k}" for k in range(40)]
    first = next(n for n in names if tiles.split_of(n, 0.3) == "dev")
    other = next(n for n in names if tiles.split_of(n, 0.3) == "train" and n > first)
    original = paths[0]
    for name in (first, other):
        (image_folder / f"{name}.png").write_bytes(open(original, "rb").read())
    data_dir = str(tmp_path / "data")
    summary = datagen.build_tile_dataset(images.list_images(str(image_folder)), data_dir, PREFIX, dev_fraction=0.3)
    group = sorted([images.image_id(original), first, other])  # one name of each split among them
    split = tiles.split_of(group[0], 0.3)
    assert summary.duplicates == [[split] + [f"{name}.png" for name in group]]
    assert f"identical files, all in {split}" in summary.report() and f"{other}.png" in summary.report()
    sources = {s: {r["source"] for p in shard_paths(data_dir, s) for r in read_records(p)} for s in ("train", "dev")}
    assert {images.image_id(original), first, other} <= sources[split]
    for p in paths[1:]:
        assert images.image_id(p) in sources[tiles.split_of(images.image_id(p), 0.3)]


def test_bad_files_are_skipped_and_reported(image_folder, tmp_path):
    (image_folder / "zero.jpg").write_bytes(b"")
    (image_folder / "notes.png").write_text("not an image")
    data_dir = str(tmp_path / "data")
    with pytest.warns(UserWarning, match="zero.jpg"):
        summary = datagen.build_tile_dataset(images.list_images(str(image_folder)), data_dir, PREFIX)
    skipped = {os.path.basename(p) for p, _ in summary.skipped}
    assert skipped == {"zero.jpg", "notes.png"} and summary.images_read == 10
    assert "files skipped: 2" in summary.report() and "zero.jpg" in summary.report()


def test_a_broken_link_named_as_an_image_is_listed_and_reported_as_skipped(image_folder, tmp_path):
    """A dangling symlink is no file to os.path.isfile, so it was dropped without a word; it is listed
    (by the datagen and upscale listings alike) and the read names it as skipped."""
    from allen_sr.api.folders import collect_images

    os.symlink(tmp_path / "moved_away.png", image_folder / "gone.png")
    gone = str(image_folder / "gone.png")
    assert gone in images.list_images(str(image_folder))
    assert gone in collect_images(str(image_folder)) and collect_images(str(image_folder / "g*.png")) == [gone]
    with pytest.warns(UserWarning, match="gone.png"):
        summary = datagen.build_tile_dataset(images.list_images(str(image_folder)), str(tmp_path / "data"), PREFIX)
    assert [os.path.basename(p) for p, _ in summary.skipped] == ["gone.png"] and summary.images_read == 10
    assert "gone.png" in summary.report()


def test_an_image_whose_name_is_not_utf8_is_tiled(image_folder, tmp_path):
    """A Latin-1 name (old zips, network shares) crashed the split, the bucket seed and the TFRecord
    writer in turn ("surrogates not allowed", no file named, nothing tiled)."""
    first = images.list_images(str(image_folder))[0]
    latin = os.path.join(str(image_folder), os.fsdecode(b"caf\xe9.png"))
    os.rename(first, latin)
    summary = datagen.build_tile_dataset(images.list_images(str(image_folder)), str(tmp_path / "data"), PREFIX)
    assert summary.skipped == [] and summary.images_read == 10
    import tensorflow as tf

    names = {os.path.basename(tf.train.Example.FromString(raw).features.feature["image/source"].bytes_list.value[0])
             for split in ("train", "dev") for path in shard_paths(str(tmp_path / "data"), split)
             for raw in tf.data.TFRecordDataset(path).as_numpy_iterator()}
    assert b"caf\xe9" in names  # the name's own bytes (the source is the stem)


def test_identical_files_skipped_as_unreadable_are_not_reported_as_duplicates(image_folder, tmp_path):
    """Duplicates are found by hash before any file is read; two identical files that are then skipped
    as unreadable were still named as identical files "all in train", though neither was used."""
    for name in ("fake.czi", "notes.png"):
        (image_folder / name).write_text("not an image")
    with pytest.warns(UserWarning, match="notes.png"):
        summary = datagen.build_tile_dataset(images.list_images(str(image_folder)), str(tmp_path / "data"), PREFIX)
    assert {os.path.basename(p) for p, _ in summary.skipped} == {"fake.czi", "notes.png"}
    assert summary.duplicates == [] and "identical files" not in summary.report()


def test_a_rerun_on_an_unchanged_folder_names_the_files_it_skipped_again(image_folder, tmp_path, capsys):
    """The rerun that finds the dataset up to date said only that; the skipped files, with why, are said
    again (they are still not in the dataset)."""
    from allen_sr.t2t.names import register_all

    register_all()
    from tensor2tensor.utils import registry

    (image_folder / "notes.png").write_text("not an image")
    problem, data_dir = registry.problem(PREFIX), str(tmp_path / "data")
    with pytest.warns(UserWarning, match="notes.png"):
        problem.generate_data(data_dir, str(image_folder))
    capsys.readouterr()
    problem.generate_data(data_dir, str(image_folder))
    out = capsys.readouterr().out
    assert "complete and up to date" in out and "files skipped: 1" in out
    assert re.search(r"- .*notes\.png: not a readable image", out), out


# ---- a killed build -----------------------------------------------------------------------------

BUILD_SCRIPT = """
import sys
from allen_sr.data import datagen, images
datagen.build_tile_dataset(images.list_images(sys.argv[1]), sys.argv[2], sys.argv[3],
                           tiles_per_shard=int(sys.argv[4]))
"""
# One or two tiles per shard: hundreds of shards, so that shuffling and the commit (renaming
# every shard into place) last long enough to be interrupted from outside.
KILL_TILES_PER_SHARD = 1


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for k in range(30):
        Image.fromarray(tissue_image(256, 256, seed=k)).save(folder / f"img_{k:02d}.png")
    return folder


@pytest.fixture(scope="module")
def clean_build(many_images, tmp_path_factory):
    """The dataset an uninterrupted build writes: every file's bytes."""
    data_dir = tmp_path_factory.mktemp("clean") / "data"
    datagen.build_tile_dataset(images.list_images(str(many_images)), str(data_dir), PREFIX,
                               tiles_per_shard=KILL_TILES_PER_SHARD)
    built = files(data_dir)
    assert len(built) > 100 and TMP_NAME not in built
    return built


TMP_NAME = datagen.TMP_DIRNAME


def _kill_when(folder, data_dir, ready, hurry=lambda: False) -> bool:
    """Run a build in a real process and SIGKILL it once `ready()`; False if it ended first.

    The polling sleeps a millisecond between looks until `hurry()` turns true, then spins.
    """
    proc = subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(folder), str(data_dir), PREFIX,
                             str(KILL_TILES_PER_SHARD)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, hurrying = time.monotonic() + 120, False
        while not ready():
            if proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, "the build made no progress"
            hurrying = hurrying or hurry()
            if not hurrying:
                time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _shards_in(folder) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if n.startswith(f"{PREFIX}-")
                and re.search(r"-\d{5}-of-\d{5}$", n)]
    except FileNotFoundError:
        return []


def _tmp_shards(data_dir) -> list[str]:
    tmp = data_dir / TMP_NAME
    return [n for work in (os.listdir(tmp) if tmp.is_dir() else []) for n in _shards_in(tmp / work)]


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["shuffle", "commit"])
def test_killed_datagen_leaves_no_partial_shard_and_rerun_completes(phase, many_images, clean_build, tmp_path):
    """SIGKILL while pass 2 is writing shards into the work folder, or while the finished shards
    are being renamed into place: no shard under a final name is ever partial, the dataset reads
    as incomplete (no info file), and the rerun writes exactly what an uninterrupted build does."""
    info = None
    for attempt in range(5):  # the commit takes milliseconds: try again if the kill came late
        data_dir = tmp_path / f"data{attempt}"
        info = data_dir / f"{PREFIX}-info.json"
        if phase == "shuffle":
            killed = _kill_when(many_images, data_dir,
                                lambda: bool(_tmp_shards(data_dir) or _shards_in(data_dir)))
        else:
            # Once pass 2 writes shards, watch closely for the first one renamed into place.
            killed = _kill_when(many_images, data_dir, lambda: bool(_shards_in(data_dir)),
                                hurry=lambda: bool(_tmp_shards(data_dir)))
        late = not killed or (info.exists() and not _tmp_shards(data_dir))  # it had finished
        if not late:
            break
    else:
        pytest.fail(f"could not kill datagen during the {phase} phase in 5 attempts")

    assert not info.exists(), "an interrupted build looks complete"
    final = _shards_in(data_dir)
    if phase == "shuffle":
        assert final == [], "a shard appeared under its final name before the commit"
        assert _tmp_shards(data_dir), "killed before pass 2 wrote a shard"
    else:
        assert final, "killed before the commit"
    for name in final:  # whatever is in place is complete: the very bytes of the clean build
        assert (data_dir / name).read_bytes() == clean_build[name], name

    datagen.build_tile_dataset(images.list_images(str(many_images)), str(data_dir), PREFIX,
                               tiles_per_shard=KILL_TILES_PER_SHARD)
    rebuilt = files(data_dir)
    assert rebuilt.keys() == clean_build.keys()  # no work folder, no stray shard left
    assert rebuilt == clean_build


AUDIT_SCRIPT = """
import json, os, sys
data_dir = os.path.abspath(sys.argv[2])
events = []

def watch(event, args):
    # Every file opened for writing and every rename, anywhere below data_dir, in this process
    # (the commit runs in the parent; workers only write into the work folder).
    if event == "open" and isinstance(args[0], str) and args[1] and any(c in str(args[1]) for c in "wax+"):
        path = os.path.abspath(args[0])
        if path.startswith(data_dir):
            events.append(["write", path])
    elif event == "os.rename":
        events.append(["rename", os.path.abspath(os.fsdecode(args[0])), os.path.abspath(os.fsdecode(args[1]))])

sys.addaudithook(watch)
from allen_sr.data import datagen, images
datagen.build_tile_dataset(images.list_images(sys.argv[1]), sys.argv[2], sys.argv[3],
                           tiles_per_shard=int(sys.argv[4]))
sys.addaudithook(lambda *a: None)
with open(sys.argv[5], "w") as f:
    json.dump(events, f)
"""


def test_every_shard_appears_under_its_final_name_by_one_rename(many_images, clean_build, tmp_path):
    """The commit's atomicity, seen deterministically (the kill test above can only catch it when
    its kill lands mid-write): no file under a shard's final name is ever opened for writing;
    each arrives whole by a rename from the work folder, and the info file comes last."""
    data_dir, log = tmp_path / "data", tmp_path / "events.json"
    subprocess.run([sys.executable, "-c", AUDIT_SCRIPT, str(many_images), str(data_dir), PREFIX,
                    str(KILL_TILES_PER_SHARD), str(log)], cwd=REPO, check=True, capture_output=True)
    events = json.loads(log.read_text())
    final = {str(data_dir / name) for name in clean_build if re.search(r"-\d{5}-of-\d{5}$", name)}
    written = [e[1] for e in events if e[0] == "write" and e[1] in final]
    assert written == [], f"{len(written)} shard(s) written in place, e.g. {written[:1]}"
    renamed = {e[2]: e[1] for e in events if e[0] == "rename" and e[2] in final}
    assert renamed.keys() == final
    assert all(os.path.join(str(data_dir), TMP_NAME) in source for source in renamed.values())
    last = [e for e in events if e[0] in ("write", "rename")][-1]
    assert last[-1].startswith(str(data_dir / f"{PREFIX}-info.json"))
    assert files(data_dir) == clean_build


FULL_DISK_SCRIPT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then an over-limit write fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # inherited by the workers
from allen_sr.data import datagen, images
datagen.build_tile_dataset(images.list_images(sys.argv[1]), sys.argv[2], "%s", force=True)
""" % PREFIX


def test_a_failed_write_names_the_file_and_keeps_the_previous_dataset(image_folder, tmp_path):
    """A write that fails mid-build (here: a file size limit, as a full disk would) ends datagen
    with an error naming the file and what to do, and leaves the complete dataset already in
    data_dir exactly as it was."""
    data_dir = tmp_path / "data"
    datagen.build_tile_dataset(images.list_images(str(image_folder)), str(data_dir), PREFIX)
    before = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(image_folder), str(data_dir)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode != 0
    said = re.search(r"datagen could not write \S+bucket-train-\d+: .*run datagen again", proc.stderr)
    assert said, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()} == before
    assert not (data_dir / datagen.TMP_DIRNAME).exists()
    # the command says it in one line, exit status 1 (a _RemoteTraceback with the message at its end)
    limited = FULL_DISK_SCRIPT.split("from allen_sr.data")[0] + (
        "from allen_sr.cli import main\nsys.exit(main(['datagen', '--problem=%s', '--data_dir=' + sys.argv[2],"
        " '--tmp_dir=' + sys.argv[1]]))" % PREFIX)
    proc = subprocess.run([sys.executable, "-c", limited, str(image_folder), str(tmp_path / "fresh")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"allen-sr datagen: error: datagen could not write \S+: .*run datagen again", proc.stderr)
    assert not [p for p in (tmp_path / "fresh").iterdir() if p.is_file()]


def test_t2t_pipeline_reads_centre_crops_and_area_inputs(image_folder, tmp_path):
    """The registered problem reads our shards through t2t: dev targets are the centre 32x32 of a
    tile and inputs their rounded 8x8 area downsample."""
    from allen_sr.t2t.names import register_all

    register_all()
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
