"""Grids (geometry and pixel placement) and PNG writing."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

from allen_sr.evaluation import metrics
from allen_sr.evaluation import pictures

RED = np.array([255, 0, 0], np.uint8)


def _tile(color, size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, np.uint8), (size, size, len(color))).copy()


# ----------------------------------------------------------------------------------- grids


def test_grid_geometry_and_red_tile_position():
    black = _tile((0, 0, 0))
    rows = [[black] * 4, [black, black, _tile(RED), black]]
    bare = np.asarray(pictures.prediction_grid(rows, columns=None))
    # 32 px tiles are zoomed 4x to 128 px; 2 px separators around and between cells.
    assert bare.shape == (2 * 130 + 2, 4 * 130 + 2, 3)
    red_cell = bare[2 + 130 : 2 + 130 + 128, 2 + 2 * 130 : 2 + 2 * 130 + 128]
    assert np.all(red_cell == RED)
    assert np.sum(np.all(bare == RED, axis=-1)) == 128 * 128  # and nowhere else
    # The pixels between cells are the grey separator, not a tile or the background.
    assert tuple(bare[0, 0]) == tuple(bare[131, 300]) == pictures._SEPARATOR

    with_header = np.asarray(pictures.prediction_grid(rows))
    header_h = with_header.shape[0] - bare.shape[0]
    assert header_h > 8
    np.testing.assert_array_equal(with_header[header_h:], bare)
    header = with_header[:header_h]
    # Dark text in each column's part of the header band.
    for j in range(4):
        column = header[:, 2 + j * 130 : 2 + j * 130 + 128]
        assert np.any(column.max(axis=-1) < 128), f"no header text above column {j}"


def test_small_input_is_nearest_enlarged_to_target_size():
    lowres = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    target = _tile((0, 255, 0))
    grid = np.asarray(pictures.prediction_grid([[lowres, target]], columns=None, scale=2))
    # Each 8x8 pixel becomes a 4x (to 32 px) then 2x (zoom) block: 8 px squares.
    np.testing.assert_array_equal(grid[2:66, 2:66], np.repeat(np.repeat(lowres, 8, 0), 8, 1))
    # An input that was already nearest-enlarged to 32 px looks identical.
    pre = metrics.upscale(lowres, 4, "nearest")
    np.testing.assert_array_equal(
        np.asarray(pictures.prediction_grid([[pre, target]], columns=None, scale=2)), grid)


def test_greyscale_cells_and_blank_cells():
    grey = np.full((32, 32, 1), 77, np.uint8)
    flat2d = np.full((32, 32), 200, np.uint8)
    grid = np.asarray(pictures.prediction_grid([[grey, flat2d, None]], columns=None, scale=1))
    assert grid.shape == (36, 3 * 34 + 2, 3)
    assert np.all(grid[2:34, 2:34] == 77)
    assert np.all(grid[2:34, 36:68] == 200)
    assert np.all(grid[2:34, 70:102] == 255)  # blank cell shows the background


def test_captions_are_drawn_below_each_row():
    rows = [[_tile((0, 0, 0))] * 2] * 2
    bare = np.asarray(pictures.prediction_grid(rows, columns=None))
    captioned = np.asarray(pictures.prediction_grid(rows, columns=None, captions=["first", "second"]))
    caption_h = (captioned.shape[0] - bare.shape[0]) // 2
    assert caption_h > 8
    row_h = 2 + 128 + 2 + caption_h
    for i in range(2):
        band = captioned[i * row_h + 132 : i * row_h + 132 + caption_h]
        assert np.any(band.max(axis=-1) < 128), f"no caption text under row {i}"


def test_grid_rejects_inconsistent_input():
    tile = _tile((1, 2, 3))
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        pictures.prediction_grid([[tile, tile], [tile]], columns=None)
    with pytest.raises(ValueError, match="3 column headers for 2 columns"):
        pictures.prediction_grid([[tile, tile]], columns=("a", "b", "c"))
    with pytest.raises(ValueError, match="integer factor"):
        pictures.prediction_grid([[np.zeros((12, 12, 3), np.uint8), tile]], columns=None)
    with pytest.raises(TypeError, match="uint8"):
        pictures.prediction_grid([[tile.astype(np.float32)]], columns=None)


def test_comparison_row_and_caption():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    lowres = target[::4, ::4]
    row = pictures.comparison_row(lowres, target, target)
    assert len(row) == len(pictures.DEFAULT_COLUMNS)
    np.testing.assert_array_equal(row[1], metrics.upscale(lowres, 4, "bicubic"))
    caption = pictures.comparison_caption(lowres, target, target)
    match = re.fullmatch(r"model (\d+\.\d\d) dB / bicubic (\d+\.\d\d) dB", caption)
    assert match and float(match.group(1)) == 100.0
    assert float(match.group(2)) == pytest.approx(metrics.psnr(row[1], target), abs=0.005)
    image = pictures.prediction_grid([row], captions=[caption])
    assert image.size[0] == 4 * 130 + 2


def test_examples_grid_layout_and_reproducibility():
    n_examples = 20
    inputs = np.stack([np.full((8, 8, 1), i * 10, np.uint8) for i in range(n_examples)])
    targets = np.stack([np.full((32, 32, 1), i * 10 + 5, np.uint8) for i in range(n_examples)])
    first = np.asarray(pictures.examples_grid(inputs, targets, n=6, per_row=4, seed=3))
    again = np.asarray(pictures.examples_grid(inputs, targets, n=6, per_row=4, seed=3))
    np.testing.assert_array_equal(first, again)
    assert first.shape[1] == 8 * 130 + 2  # 4 (input, target) pairs per row
    # Each pair shows an input and the target of the same example (values 10i and 10i + 5).
    # x = 1 is inside the left border: white in the header band, grey from the first row on.
    first_row_y = int(np.argmax(first[:, 1, 0] != 255)) + 2
    shown = []
    for k in range(4):
        x = 2 + 2 * k * 130
        input_value = int(first[first_row_y + 5, x + 5, 0])
        target_value = int(first[first_row_y + 5, x + 130 + 5, 0])
        assert target_value == input_value + 5
        shown.append(input_value // 10)
    assert shown == sorted(shown) and len(set(shown)) == 4  # distinct, in dataset order
    # Fewer examples than asked for: all are shown.
    small = pictures.examples_grid(inputs[:3], targets[:3], n=8, per_row=4)
    assert small.size[0] == 6 * 130 + 2


def test_save_png_is_atomic_and_round_trips(tmp_path):
    image = pictures.prediction_grid([[_tile(RED), _tile((0, 0, 255))]], columns=("red", "blue"))
    path = pictures.save_png(image, tmp_path / "a" / "b" / "grid.png")
    assert path == tmp_path / "a" / "b" / "grid.png"
    with Image.open(path) as reopened:
        assert reopened.format == "PNG"
        np.testing.assert_array_equal(np.asarray(reopened.convert("RGB")), np.asarray(image))
    assert os.listdir(path.parent) == ["grid.png"]
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
    with Image.open(pictures.save_png(grey, tmp_path / "grey.png")) as reopened:
        np.testing.assert_array_equal(np.asarray(reopened), grey[..., 0])


def test_results_of_fewer_examples_leave_no_stale_pictures(tmp_path):
    """A decode into a folder that holds a larger earlier decode, with uncertainty maps: only this
    run's examples remain, and its uncertainty pictures only when it has an uncertainty section."""
    from allen_sr.evaluation.results import write_results

    rng = np.random.default_rng(0)
    targets = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    inputs = [t[::4, ::4] for t in targets]
    (tmp_path / "example_notes.png").write_bytes(b"not ours")
    for count, uncertain in ((5, True), (2, True), (2, False)):
        if uncertain:  # as write_uncertainty leaves them before the results are written
            maps = [f"uncertainty_{i:03d}.png" for i in range(count)]
            for name in ["reliability.png", "uncertainty_grid.png"] + maps:
                (tmp_path / name).write_bytes(b"png")
        write_results(tmp_path, inputs[:count], targets[:count], targets[:count], example_pngs=True,
                      extra={"uncertainty": {}} if uncertain else None)
        expected = [f"example_{i:03d}.png" for i in range(count)] + ["example_notes.png", "grid.png"]
        if uncertain:
            expected += ["reliability.png", "uncertainty_grid.png"] + [f"uncertainty_{i:03d}.png" for i in range(count)]
        assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(expected)


def test_results_of_whole_images_of_several_sizes_make_one_grid(tmp_path):
    """`evaluate --whole` on images smaller than the grid's crop and of different sizes."""
    from allen_sr.evaluation.results import write_results

    rng = np.random.default_rng(1)
    targets = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((96, 96, 3), (96, 100, 3), (200, 160, 3))]
    inputs = [t[::4, ::4] for t in targets]
    write_results(tmp_path, inputs, targets, targets, names=["a", "b", "c"], grid_crop=128)
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.height > 3 * 96


def test_results_of_a_non_integer_ratio_resize_the_baselines_to_the_target(tmp_path):
    """48 -> 64 px (img2img_allen_brain_dim48to64): the baselines are Pillow resizes to 64x64, the luma
    crop the ratio rounded up (2 px), and the decoded tiles' PNGs are written."""
    import json

    from allen_sr.evaluation import metrics
    from allen_sr.evaluation.results import write_results

    rng = np.random.default_rng(2)
    targets = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    inputs = np.stack([np.asarray(Image.fromarray(t).resize((48, 48), Image.Resampling.BOX)) for t in targets])
    summary = write_results(tmp_path, inputs, targets, targets, example_pngs=True, baselines=metrics.METHODS)
    bicubic = np.asarray(Image.fromarray(inputs[0]).resize((64, 64), Image.Resampling.BICUBIC))
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert f"0,bicubic,{metrics.psnr(bicubic, targets[0]):.6f}" in "\n".join(rows)
    assert summary["methods"]["model"]["psnr"] == 100 and summary["methods"]["bicubic"]["psnr"] < 40
    assert "2 px cropped" in json.loads((tmp_path / "metrics.json").read_text())["protocol"]
    assert sorted(p.name for p in tmp_path.glob("example_*.png")) == ["example_000.png", "example_001.png"]


def test_whole_image_grid_cells_show_the_same_region_when_the_size_difference_is_odd(tmp_path):
    """A 33x50 input of a 132x200 image: the 32 px input cell lies under the 128 px output cells (its
    corner times 4), not half an input pixel above them as centring each cell alone put it."""
    from allen_sr.evaluation.results import centre_cells

    rng = np.random.default_rng(3)
    lr = rng.integers(0, 256, (33, 50, 3), dtype=np.uint8)
    hr = np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1)  # each input pixel a 4x4 block: easy to line up
    cell_in, cell_hr = centre_cells(lr, [hr], 128, 4)
    assert cell_in.shape == (32, 32, 3) and cell_hr.shape == (128, 128, 3)
    np.testing.assert_array_equal(np.repeat(np.repeat(cell_in, 4, axis=0), 4, axis=1), cell_hr)
