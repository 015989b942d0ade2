"""The Allen problem variants, read back through tensor2tensor's own input pipeline.

One small real dataset (the problems' own generate_data on synthetic tissue images; no download,
as --tmp_dir already holds images) serves every variant: they all read the `img2img_allen_brain`
tiles. Examples are read with `problem.dataset(mode, data_dir, hparams)` in graph mode, as
training and `allen_sr.decoding.examples.read_examples` do, with ``shuffle_files=False`` so that
example i comes from record i of the split and can be compared with the tile it was cut from.
"""
from __future__ import annotations

import glob
import os
import re

import numpy as np
import pytest

from allen_sr.data import tiles
from allen_sr.decoding.examples import drain
from allen_sr.t2t.names import register_all
from conftest import FullDisk, save_tissue_images

DATASET = "img2img_allen_brain"
HPARAMS_SET = "img2img_conv_sr_cpu"  # any registered set: the problems only read num_channels/img_len
# tf.image.rgb_to_grayscale's weights: ITU-R BT.601 luma (0.299, 0.587, 0.114), 0.299 written 0.2989.
TF_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32).astype(np.float64)
ITU_R_601 = np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """img2img_allen_brain-{train,dev}-* from 10 synthetic slides (72 train / 8 dev tiles), built by
    a variant's own generate_data: the Allen problems tile the images already in --tmp_dir."""
    register_all()
    from tensor2tensor.utils import registry

    root = tmp_path_factory.mktemp("allen_problems")
    images = save_tissue_images(root / "images")
    out = str(root / "data")
    registry.problem("img2img_allen_brain_dim16to16_paint1").generate_data(out, str(images))
    return out


def raw_tiles(data_dir: str, split: str) -> np.ndarray:
    """The 64x64 RGB tiles of a split, in record order (the order t2t reads them unshuffled)."""
    import tensorflow as tf

    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, f"{DATASET}-{split}-*"))):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            feature = tf.train.Example.FromString(raw).features.feature
            out.append(np.frombuffer(feature["image/encoded"].bytes_list.value[0], np.uint8).reshape(64, 64, 3))
    return np.stack(out)


def read(problem_name: str, mode: str, data_dir: str, epochs: int = 1,
         degradation: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of every example of the mode's split, ``epochs`` times over, as uint8.

    ``degradation`` is the set's hparam (default none: the problem's own clean inputs)."""
    register_all()
    import tensorflow as tf
    from tensor2tensor.utils import registry, trainer_lib

    problem = registry.problem(problem_name)
    hparams = trainer_lib.create_hparams(HPARAMS_SET, data_dir=data_dir, problem_name=problem_name)
    if hasattr(hparams, "color_augment"):  # optional colour augmentation: not what these tests check
        hparams.set_hparam("color_augment", "")
    hparams.set_hparam("degradation", degradation)
    with tf.Graph().as_default():
        dataset = problem.dataset(mode, data_dir=data_dir, hparams=hparams, shuffle_files=False).repeat(epochs)
        inputs, targets = drain(dataset)
    x, y = np.stack(inputs), np.stack(targets)
    assert x.min() >= 0 and y.min() >= 0 and x.max() <= 255 and y.max() <= 255
    return x.astype(np.uint8), y.astype(np.uint8)


def assert_rounded(actual: np.ndarray, exact: np.ndarray) -> None:
    """actual == exact rounded to the nearest integer. Where the exact value is within 1e-3 of
    a .5 tie (TF computes in float32), either neighbour is accepted."""
    assert actual.shape == exact.shape
    diff = actual.astype(np.float64) - np.round(exact)
    tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-3
    assert np.all(diff[~tie] == 0), f"{np.count_nonzero(diff[~tie])} values differ from the rounded exact ones"
    assert np.all(np.abs(diff[tie]) <= 1)


def area_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Exact area resize (float64) of [H, H, C] to [size, size, C]: each output pixel is the mean of
    its footprint, every input pixel weighted by the fraction of it inside the footprint."""
    n = image.shape[0]
    scale = n / size
    weights = np.zeros((size, n))
    for i in range(size):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(np.floor(lo)), int(np.ceil(hi))):
            weights[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
    return np.einsum("ij,jkc,lk->ilc", weights, image.astype(np.float64), weights)


def dihedral_crop(target: np.ndarray, tile: np.ndarray) -> tuple[int, bool, int, int] | None:
    """(k, flipped, top, left) with target == rot90(fliplr?(tile[top:top+s, left:left+s]), k), or None.

    TRAIN preprocessing: random crop, random left-right flip, then k random 90-degree turns
    (tf.image.rot90 turns counter-clockwise, as np.rot90 does on the first two axes).
    """
    size = target.shape[0]
    last = tile.shape[0] - size
    for k in range(4):
        for flipped in (False, True):
            crop = np.rot90(target, -k)
            if flipped:
                crop = crop[:, ::-1]
            tops, lefts = np.nonzero((tile[:last + 1, :last + 1] == crop[0, 0]).all(-1))
            for top, left in zip(tops, lefts):
                if np.array_equal(tile[top:top + size, left:left + size], crop):
                    return k, flipped, int(top), int(left)
    return None


# --------------------------------------------------------------------------- the dataset


def test_every_allen_variant_reads_the_shared_tiles(data_dir):
    """The variants share one dataset (prefix img2img_allen_brain); datagen downloaded nothing."""
    register_all()
    from tensor2tensor.utils import registry

    names = ["img2img_allen_brain_dim8to32", "img2img_allen_brain_dim16to64", "img2img_allen_brain_dim48to64",
             "img2img_allen_brain_dim8to32_grey", "img2img_allen_brain_dim16to16_paint1"]
    assert {registry.problem(n).dataset_filename() for n in names} == {DATASET}
    assert len(raw_tiles(data_dir, "train")) == 72 and len(raw_tiles(data_dir, "dev")) == 8
    images = os.path.join(os.path.dirname(data_dir), "images")
    assert sorted(os.listdir(images)) == [f"slide_{k}.png" for k in range(10)]  # nothing downloaded


# --------------------------------------------------------------------------- crops and augmentation


def test_train_examples_are_random_crops_flips_and_rotations_and_eval_is_the_centre_crop(data_dir):
    """TRAIN: each example is a 32 px crop of its tile, flipped and turned at random, so two epochs
    give two different examples of a tile, and over 144 examples every one of the 8 flips/turns
    and many crop positions occur. EVAL: the fixed centre crop, the same on every read."""
    train = raw_tiles(data_dir, "train")
    inputs, targets = read("img2img_allen_brain_dim8to32", "train", data_dir, epochs=2)
    n = len(train)
    assert targets.shape == (2 * n, 32, 32, 3) and inputs.shape == (2 * n, 8, 8, 3)
    found = [dihedral_crop(target, train[i % n]) for i, target in enumerate(targets)]
    assert all(f is not None for f in found), [i for i, f in enumerate(found) if f is None]
    assert {(k, flipped) for k, flipped, _, _ in found} == {(k, f) for k in range(4) for f in (False, True)}
    offsets = {(top, left) for _, _, top, left in found}
    assert len(offsets) > 50, offsets  # of 33 x 33 possible; a fixed crop would give 1
    # Two epochs, two draws per tile: equal only by a 1-in-8712 chance each.
    same = sum(np.array_equal(targets[i], targets[i + n]) for i in range(n))
    assert same <= 2, f"{same} of {n} tiles gave the same example in both epochs"
    for x, y in zip(inputs, targets):  # the input follows its augmented target
        np.testing.assert_array_equal(x, tiles.area_downsample(y, 4))

    dev = raw_tiles(data_dir, "dev")
    for _ in range(2):
        inputs, targets = read("img2img_allen_brain_dim8to32", "eval", data_dir)
        np.testing.assert_array_equal(targets, dev[:, 16:48, 16:48])
        np.testing.assert_array_equal(inputs, np.stack([tiles.area_downsample(y, 4) for y in targets]))


# --------------------------------------------------------------------------- the variants


def test_dim16to64_is_the_whole_tile_and_its_4x4_area_means(data_dir):
    dev = raw_tiles(data_dir, "dev")
    inputs, targets = read("img2img_allen_brain_dim16to64", "eval", data_dir)
    assert inputs.shape == (8, 16, 16, 3) and targets.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(targets, dev)
    for x, y in zip(inputs, targets):
        assert_rounded(x, area_resize(y, 16))
        np.testing.assert_array_equal(x, tiles.area_downsample(y, 4))


def test_dim48to64_input_is_the_rounded_area_resize_by_three_quarters(data_dir):
    """64 -> 48 px: every input pixel covers 4/3 x 4/3 target pixels, partial ones by their area."""
    dev = raw_tiles(data_dir, "dev")
    inputs, targets = read("img2img_allen_brain_dim48to64", "eval", data_dir)
    assert inputs.shape == (8, 48, 48, 3) and targets.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(targets, dev)
    for x, y in zip(inputs, targets):
        assert_rounded(x, area_resize(y, 48))


def test_grey_targets_are_the_rounded_itu_r_601_luma_of_the_tile(data_dir):
    """img2img_allen_brain_dim8to32_grey: one channel, round(0.2989 R + 0.587 G + 0.114 B) of the
    centre crop (tf.image.rgb_to_grayscale), and the input is its rounded 4x4 area mean."""
    dev = raw_tiles(data_dir, "dev")
    inputs, targets = read("img2img_allen_brain_dim8to32_grey", "eval", data_dir)
    assert inputs.shape == (8, 8, 8, 1) and targets.shape == (8, 32, 32, 1)
    crops = dev[:, 16:48, 16:48].astype(np.float64)
    assert_rounded(targets[..., 0], crops @ TF_LUMA)
    # The standard's 0.299 instead of 0.2989 moves a value by at most 0.0001 * 255.
    assert np.abs(targets[..., 0] - crops @ ITU_R_601).max() <= 0.5 + 0.0001 * 255
    assert not np.array_equal(targets[..., 0], np.round(crops.mean(-1)))  # luma, not the channel mean
    for x, y in zip(inputs, targets):
        np.testing.assert_array_equal(x, tiles.area_downsample(y, 4))


def test_paint1_zeroes_one_pixel_per_example_at_its_own_place(data_dir):
    """img2img_allen_brain_dim16to16_paint1: the input is the 16x16 target with a square of side
    int(sqrt(16 * 16 * 1%)) = 1 px zeroed (1 of 256 px, 0.4%: inpaint_fraction 1% floors to one
    pixel), drawn per example: 144 training examples put it in many different places."""
    from tensor2tensor.utils import registry

    assert registry.problem("img2img_allen_brain_dim16to16_paint1").inpaint_fraction == 0.01
    dev = raw_tiles(data_dir, "dev")
    places = []
    for mode, epochs in (("eval", 1), ("train", 2)):
        inputs, targets = read("img2img_allen_brain_dim16to16_paint1", mode, data_dir, epochs)
        assert inputs.shape[1:] == targets.shape[1:] == (16, 16, 3)
        if mode == "eval":
            np.testing.assert_array_equal(targets, dev[:, 24:40, 24:40])
        assert targets.reshape(len(targets), -1, 3).max(-1).min() > 0  # no pixel is already black
        for x, y in zip(inputs, targets):
            hole = (x != y).any(-1)
            assert hole.sum() == 1, f"{hole.sum()} pixels masked, expected 1 of 256"
            assert (x[hole] == 0).all()
            np.testing.assert_array_equal(x[~hole], y[~hole])
            places.append(tuple(np.argwhere(hole)[0]))
    assert len(set(places[:8])) > 1, places[:8]  # the dev examples do not share one mask
    assert len(set(places)) > 60, len(set(places))  # 152 draws of 256 places


# --------------------------------------------------------------------------- real inputs


def test_training_inputs_are_degraded_by_the_sets_default_and_eval_inputs_stay_clean(data_dir):
    """Every variant under the set's default `degradation`: in training a share of the inputs is
    no longer the area average of its target (blurred, noisy, JPEG), about the spec's clean share
    is exactly it; eval inputs are always exactly it (the problem and its dev metrics unchanged)."""
    from allen_sr.data.degrade import REAL_INPUTS, parse_training

    spec = parse_training(REAL_INPUTS)
    for problem_name, factor in (("img2img_allen_brain_dim8to32", 4), ("img2img_allen_brain_dim8to32_grey", 4),
                                 ("img2img_allen_brain_dim16to64", 4)):
        inputs, targets = read(problem_name, "train", data_dir, epochs=3, degradation=REAL_INPUTS)
        clean = np.array([np.array_equal(x, tiles.area_downsample(y, factor)) for x, y in zip(inputs, targets)])
        # Degraded examples are rarely equal to the clean input by chance (a low blur and no noise or JPEG).
        assert 0.6 * spec.clean <= clean.mean() <= spec.clean + 0.25, (problem_name, clean.mean())
        clean_inputs = np.stack([tiles.area_downsample(y, factor) for y in targets[~clean]])
        error = np.abs(inputs[~clean].astype(int) - clean_inputs)
        assert error.mean() > 1.0 and error.max() <= 255
        x, y = read(problem_name, "eval", data_dir, degradation=REAL_INPUTS)
        np.testing.assert_array_equal(x, np.stack([tiles.area_downsample(t, factor) for t in y]))


def allen_problem(server):
    """The Allen problem with its built-in download pointed at the stand-in (no rate limit)."""
    register_all()
    from tensor2tensor.utils import registry

    problem = registry.problem("img2img_allen_brain_dim8to32")
    problem.api_base, problem.download_rate = server.api_base, None
    return problem


def test_datagen_download_goes_on_after_an_interrupted_one(server, tmp_path, caplog, capsys):
    """A folder holding part of the stock set from datagen's own download is completed, not tiled as it is: only
    the missing images are requested, at the README's --downsample 1, and the few that fail are counted."""
    from allen_sr.data.download import default_image_ids

    stock = default_image_ids()
    for image_id in stock[:40]:
        server.add_image(image_id, width=16, height=12)
    tmp = tmp_path / "raw"
    assert len(allen_problem(server).source_images(str(tmp))) == 40  # the other 60: 404, tiled without them
    for image_id in stock[40:95]:
        server.add_image(image_id, width=16, height=12)
    server.clear_log()
    caplog.clear()
    capsys.readouterr()
    paths = allen_problem(server).source_images(str(tmp))
    assert len(paths) == 95 and len(server.image_requests()) == 60  # the 40 finished ones: no request
    assert {r.query.get("downsample") for r in server.image_requests()} == {"1"}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("5 of 100 Allen images could not be downloaded (5 x image "
                                                         "<id> not found on ")
    out = capsys.readouterr().out
    assert f"datagen: fetching 60 stock Allen images into --tmp_dir={tmp} (40 of the 100 there already)" in out
    assert f"95 of 100 images present in {tmp}: 55 downloaded" in out  # the download's summary


def test_datagen_stops_when_no_allen_image_can_be_downloaded(server, tmp_path):
    """Every download failing (100 x 404) stops datagen before tiling, saying why; no dataset is left."""
    from allen_sr.errors import MissingInputError

    data_dir = tmp_path / "data"
    with pytest.raises(MissingInputError, match=r"none of the 100 Allen images could be downloaded into .*"
                                                r"\(100 x image <id> not found on .*\(404\): check the id\): check "):
        allen_problem(server).generate_data(str(data_dir), str(tmp_path / "raw"))
    assert not data_dir.exists() or not os.listdir(data_dir)


def test_an_allen_download_selection_is_tiled_as_it_is_with_a_warning_of_mixed_settings(server, tmp_path, caplog,
                                                                                          capsys):
    """Images of the user's own `allen-sr download` (here 7 of the stock ids, with two settings) are tiled as they
    are, not grown to the 100 stock images; one warning counts the images of each setting."""
    from allen_sr.data.download import default_image_ids, download_images

    stock = default_image_ids()
    for image_id in stock:
        server.add_image(image_id, width=16, height=12)
    tmp = tmp_path / "raw"
    download_images(stock[:4], tmp, api_base=server.api_base, rate=None)
    download_images(stock[4:7], tmp, api_base=server.api_base, rate=None, downsample=1)
    server.clear_log()
    caplog.clear()
    capsys.readouterr()
    paths = allen_problem(server).source_images(str(tmp))
    assert len(paths) == 7 and server.image_requests() == []
    assert f"datagen: tiling the 7 images in --tmp_dir={tmp}; nothing is downloaded" in capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "mixes images downloaded with different settings (4 at full resolution, " \
                                  "3 at downsample 1)" in warnings[0]


def test_datagen_stops_when_its_download_fills_the_disk(server, tmp_path, monkeypatch):
    """A full disk partway through datagen's download ends datagen with the disk-full message (allen-sr
    datagen says it in one line, exit 1) instead of tiling the images that came before it; no dataset is
    written. (The problem's own generate_data: t2t_datagen's flags cannot be defined again in a process
    that has defined t2t-trainer's.)"""
    from allen_sr.data import download

    for image_id in download.default_image_ids():
        server.add_image(image_id, width=256, height=192)
    real_create, created = download.create_temp_file, []

    def create_until_the_disk_is_full(path):  # the first 20 images fit, then the disk is full
        created.append(path)
        return real_create(path) if len(created) <= 20 else FullDisk(real_create(path))

    monkeypatch.setattr(download, "create_temp_file", create_until_the_disk_is_full)
    data_dir, tmp = tmp_path / "data", tmp_path / "raw"
    with pytest.raises(OSError) as caught:
        allen_problem(server).generate_data(str(data_dir), str(tmp))
    assert re.fullmatch(rf"the Allen download into --tmp_dir={tmp} stopped, nothing was "
                        r"tiled: image \d+: no space left on the device holding .* then run the same command again; "
                        "finished images are kept and will be skipped", caught.value.strerror), caught.value
    assert 20 <= len(list(tmp.glob("*.jpg"))) < 100
    assert not data_dir.exists() or not [p for p in data_dir.iterdir() if p.is_file()]