"""Pictures: prediction and example grids (Pillow), saved as PNG.

Grid interface: a grid is a list of rows, each row a sequence of uint8 images (HxWxC with C = 1 or
3, or HxW), one per column; ``None`` leaves a cell blank. All cells are shown at one common size:
the largest tile in the grid (normally the 32x32 target). Smaller tiles (the 8x8 input) are
enlarged to it with nearest-neighbour by an exact integer factor, so an 8x8 input and an input
that was already nearest-enlarged to 32x32 look identical. Then every cell is zoomed by ``scale``
(nearest again) so a 32 px tile is comfortably visible. :func:`comparison_row` and
:func:`comparison_caption` build the usual "input / bicubic / model / target" row.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from allen_sr.fileio import atomic_write_bytes


DEFAULT_COLUMNS: tuple[str, ...] = ("input (nearest)", "bicubic", "model", "target")

# Cells are zoomed so the largest tile is about this many pixels wide (32 px tiles -> 4x).
_TARGET_CELL_PX = 128
_BACKGROUND = (255, 255, 255)
_SEPARATOR = (150, 150, 150)
_TEXT = (0, 0, 0)
_FONT_PX = 13
_MIN_FONT_PX = 8
_TEXT_PAD = 4


# --------------------------------------------------------------------------- grids


def _as_rgb(image: Any) -> np.ndarray:
    """A uint8 HxWx3 copy of an HxW, HxWx1 or HxWx3 uint8 image."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"grid cells must be uint8, got {arr.dtype} (shape {arr.shape})")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"grid cells must be HxW, HxWx1 or HxWx3, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def _enlarge_nearest(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if height % h or width % w:
        raise ValueError(
            f"a {h}x{w} cell cannot be enlarged to the grid's {height}x{width} cells by an "
            "integer factor"
        )
    return np.repeat(np.repeat(arr, height // h, axis=0), width // w, axis=1)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        # Pillow without FreeType only has the fixed-size bitmap font.
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(math.ceil(right - left)), int(math.ceil(bottom - top))


def _fitting_font(texts: Iterable[str], max_width: int) -> Any:
    """The largest default font, up to _FONT_PX, in which every text fits ``max_width``."""
    texts = [t for t in texts if t]
    size = _FONT_PX
    while size > _MIN_FONT_PX and any(_text_size(_font(size), t)[0] > max_width for t in texts):
        size -= 1
    return _font(size)


def _ellipsize(font: Any, text: str, max_width: int) -> str:
    if _text_size(font, text)[0] <= max_width:
        return text
    while text and _text_size(font, text + "...")[0] > max_width:
        text = text[:-1]
    return text + "..."


def _band_height(font: Any) -> int:
    # Measure a string with ascenders and descenders so every band has the same height.
    return _text_size(font, "Ag(y)")[1] + 2 * _TEXT_PAD


def _text_top(font: Any) -> int:
    """Offset to draw text at so its glyphs start _TEXT_PAD below a band's top edge."""
    # Pillow positions text by its ascender line; the glyph box starts getbbox()[1] lower.
    return _TEXT_PAD - int(font.getbbox("Ag(y)")[1])


def prediction_grid(
    rows: Sequence[Sequence[Any | None]],
    columns: Sequence[str] | None = DEFAULT_COLUMNS,
    scale: int | None = None,
    captions: Sequence[str | None] | None = None,
    separator: int = 2,
) -> Image.Image:
    """Lay out rows of uint8 tiles as one RGB picture with column headers and row captions.

    Args:
      rows: one sequence of images per row, one image per column (``None`` = blank cell). Each
        image is HxWxC (C = 1 or 3) or HxW uint8; greyscale is shown as grey RGB. Cells smaller
        than the largest one are nearest-enlarged to it by an integer factor (see module doc).
      columns: header text per column; ``None`` or empty for no header band.
      scale: integer nearest zoom applied to every cell; ``None`` picks one so the largest tile is
        about 128 px (4x for 32 px tiles).
      captions: optional text under each row, e.g. ``"model 27.1 dB / bicubic 26.3 dB"``.
      separator: width in pixels of the grey lines between and around cells.

    Returns:
      A ``PIL.Image.Image`` in RGB mode.
    """
    if not rows:
        raise ValueError("prediction_grid needs at least one row")
    n_cols = len(rows[0])
    if n_cols == 0:
        raise ValueError("rows must have at least one cell")
    for i, row in enumerate(rows):
        if len(row) != n_cols:
            raise ValueError(f"row {i} has {len(row)} cells, row 0 has {n_cols}")
    if columns and len(columns) != n_cols:
        raise ValueError(f"{len(columns)} column headers for {n_cols} columns")
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"{len(captions)} captions for {len(rows)} rows")

    cells = [[None if c is None else _as_rgb(c) for c in row] for row in rows]
    present = [c for row in cells for c in row if c is not None]
    if not present:
        raise ValueError("every cell is empty")
    base_h = max(c.shape[0] for c in present)
    base_w = max(c.shape[1] for c in present)
    if scale is None:
        scale = max(1, round(_TARGET_CELL_PX / max(base_h, base_w)))
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    cell_h, cell_w = base_h * int(scale), base_w * int(scale)

    header_font = _fitting_font(columns or (), cell_w - 2 * _TEXT_PAD)
    header_h = _band_height(header_font) if columns else 0
    grid_w = n_cols * cell_w + (n_cols + 1) * separator
    caption_font = _fitting_font([c for c in captions or () if c], grid_w - 2 * _TEXT_PAD)
    caption_h = _band_height(caption_font) if captions and any(captions) else 0
    row_h = separator + cell_h + separator + caption_h
    # Rows share their separators: without captions each row adds cell_h + separator.
    if caption_h:
        grid_h = header_h + len(rows) * row_h
    else:
        grid_h = header_h + len(rows) * (cell_h + separator) + separator

    canvas = Image.new("RGB", (grid_w, grid_h), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    for j, title in enumerate(columns or ()):
        text = _ellipsize(header_font, str(title), cell_w - 2 * _TEXT_PAD)
        text_w, _ = _text_size(header_font, text)
        x = separator + j * (cell_w + separator) + (cell_w - text_w) // 2
        draw.text((x, _text_top(header_font)), text, fill=_TEXT, font=header_font)

    y = header_h
    for i, row in enumerate(cells):
        # One grey block per row; the cells pasted on top leave only the separator lines visible.
        draw.rectangle([0, y, grid_w - 1, y + cell_h + 2 * separator - 1], fill=_SEPARATOR)
        for j, cell in enumerate(row):
            x = separator + j * (cell_w + separator)
            if cell is None:
                draw.rectangle([x, y + separator, x + cell_w - 1, y + separator + cell_h - 1],
                               fill=_BACKGROUND)
                continue
            big = _enlarge_nearest(cell, base_h, base_w)
            big = np.repeat(np.repeat(big, scale, axis=0), scale, axis=1)
            canvas.paste(Image.fromarray(np.ascontiguousarray(big)), (x, y + separator))
        if caption_h:
            caption = captions[i] if captions else None
            if caption:
                text = _ellipsize(caption_font, str(caption), grid_w - 2 * _TEXT_PAD)
                draw.text((_TEXT_PAD, y + cell_h + 2 * separator + _text_top(caption_font)),
                          text, fill=_TEXT, font=caption_font)
            y += row_h
        else:
            y += cell_h + separator
    return canvas


def comparison_row(
    input_lr: Any, prediction: Any, target: Any, baseline: str = "bicubic"
) -> list[np.ndarray]:
    """``[input, baseline(input), prediction, target]`` for :func:`prediction_grid`'s default columns.

    ``input_lr`` is the low-resolution input (e.g. 8x8); the baseline is a Pillow resize of it to
    the target size. The input itself is returned as is: the grid nearest-enlarges it.
    """
    from allen_sr.evaluation.metrics import upscale

    lr = np.asarray(input_lr)
    hr = np.asarray(target)
    factor = hr.shape[0] // lr.shape[0]
    if factor * lr.shape[0] != hr.shape[0] or factor * lr.shape[1] != hr.shape[1]:
        raise ValueError(f"target {hr.shape} is not an integer multiple of input {lr.shape}")
    return [lr, upscale(lr, factor, baseline), np.asarray(prediction), hr]


def comparison_caption(
    input_lr: Any, prediction: Any, target: Any, baseline: str = "bicubic"
) -> str:
    """Row caption with the PSNR of the model and of the baseline.

    For example ``"model 27.10 dB / bicubic 26.30 dB"``.
    """
    from allen_sr.evaluation.metrics import psnr

    _, base, pred, hr = comparison_row(input_lr, prediction, target, baseline)
    return f"model {psnr(pred, hr):.2f} dB / {baseline} {psnr(base, hr):.2f} dB"


def examples_grid(
    inputs: Sequence[Any] | np.ndarray,
    targets: Sequence[Any] | np.ndarray,
    n: int = 8,
    per_row: int = 4,
    seed: int = 0,
    scale: int | None = None,
) -> Image.Image:
    """Random dataset examples, each as an input (nearest-enlarged) / target pair.

    ``n`` examples (all of them if there are fewer) are drawn without replacement with ``seed``
    and shown in dataset order, ``per_row`` pairs per grid row; each row's caption lists the
    example indices so a tile can be found again.
    """
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    if len(inputs) == 0:
        raise ValueError("no examples to show")
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    rng = np.random.default_rng(seed)
    count = min(n, len(inputs))
    chosen = sorted(int(i) for i in rng.choice(len(inputs), size=count, replace=False))
    per_row = min(per_row, count)
    rows: list[list[Any | None]] = []
    captions: list[str] = []
    for start in range(0, count, per_row):
        batch = chosen[start : start + per_row]
        row: list[Any | None] = []
        for index in batch:
            row += [inputs[index], targets[index]]
        row += [None, None] * (per_row - len(batch))
        rows.append(row)
        captions.append("examples " + ", ".join(f"#{i}" for i in batch))
    columns = ("input (nearest)", "target") * per_row
    return prediction_grid(rows, columns=columns, scale=scale, captions=captions)


def save_png(image: Image.Image | np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` (PIL image or uint8 array) as PNG atomically, creating parent folders."""
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise TypeError(f"save_png expects uint8 arrays, got {arr.dtype}")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        image = Image.fromarray(np.ascontiguousarray(arr))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(buffer.getvalue(), path)
