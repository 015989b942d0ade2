"""`allen-sr upscale`: enlarge a whole image (or a region of it) by the model's factor.

The image is cut into overlapping tiles; each tile is predicted and the predictions are blended
with smooth weights (`allen_sr.inference.blend`), so no seam shows. The conv model predicts large
tiles with enough context that the result equals one prediction of the whole image; the Image
Transformer decodes its 8x8 -> 32x32 tiles in large batches, overlapping by half a tile. Rows
are written as they are predicted: memory depends on the tile batch, not on the image.

Input: PNG, JPEG, TIFF, BigTIFF, OME-TIFF or a pyramidal whole-slide TIFF (--level picks the
resolution level; read region by region), or --image_id, an Allen section fetched first.
Output: .png / .jpg (up to 100 MP), or .tif / .ome.tif: a tiled, compressed, pyramidal BigTIFF
with the physical pixel size when known. Also OUT-stem.compare.png: a preview region,
input enlarged with nearest | bicubic | model. Nothing appears under OUT until it is complete.

Resumable: finished output rows are kept in a hidden folder next to OUT (``.OUT.resume``,
`allen_sr.inference.resume`) until OUT is written; rerunning the same command after an
interruption predicts only the rest (--restart: start from the top).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from allen_sr.commands import args as shared
from allen_sr.commands.evaluate import to_grey
from allen_sr.evaluation import metrics, pictures
from allen_sr.inference import resume, sources, tiling, writers

CONV_MODEL = "img2img_conv_sr"
CONV_TILE = 384  # input px: 1536 px output tiles; larger tiles gain < 5% speed and cost memory
RAMP = 16  # input px of smooth blending beyond the conv model's context on each side
TRANSFORMER_BATCH = 256  # tiles decoded together by the Image Transformer's decoders


@dataclass(frozen=True)
class Region:
    """A rectangle of an image in pixels; ``width``/``height`` None reach the right/bottom edge."""

    left: int = 0
    top: int = 0
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Options:
    """How to tile and what to write besides the output."""

    tile: int | None = None  # None: the model's default
    overlap: int | None = None
    level: int = 0
    batch_tiles: int | None = None
    preview_size: int = 128  # input px of the compare picture (0: none)
    pixel_size_um: float | None = None
    restart: bool = False  # ignore rows an interrupted run saved
    compression: str = "deflate"  # TIFF output: writers.TIFF_COMPRESSION


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allen-sr upscale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    shared.add_model_args(p)
    p.set_defaults(batch_size=None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image file to enlarge (PNG, JPEG, TIFF, BigTIFF, OME-TIFF, slide)")
    src.add_argument("--image_id", type=int, help="an Allen section image id, downloaded first")
    p.add_argument("--downsample", type=int, default=0, help="with --image_id: halve the section N times (default 0)")
    p.add_argument("--api_base", default=None, help="with --image_id: Allen API base URL")
    p.add_argument("--download_dir", default=None, help="with --image_id: where the section goes (default: OUT's folder)")
    p.add_argument("--level", type=int, default=0, help="resolution level of a pyramidal TIFF (0 = full)")
    p.add_argument("--left", type=int, default=0, help="region left edge, px (default 0)")
    p.add_argument("--top", type=int, default=0, help="region top edge, px (default 0)")
    p.add_argument("--width", type=int, help="region width, px (default: to the right edge)")
    p.add_argument("--height", type=int, help="region height, px (default: to the bottom edge)")
    p.add_argument("--tile", type=int, help=f"largest tile side in input px (conv model: default {CONV_TILE}; "
                                            "Image Transformer: its input size, 8)")
    p.add_argument("--overlap", type=int, help="tile overlap in input px (conv: default its context x 2 "
                                               f"+ {RAMP}; Image Transformer: half a tile)")
    p.add_argument("--pixel_size", type=float, help="um per input px, when the file does not say")
    p.add_argument("--preview_size", type=int, default=128, help="input px of the compare picture (0: none)")
    p.add_argument("--restart", action="store_true",
                   help="predict everything again, ignoring the rows an interrupted run saved")
    p.add_argument("--compression", choices=sorted(writers.TIFF_COMPRESSION), default="deflate",
                   help="TIFF output: deflate (default; every reader) or zstd (less CPU, same size; "
                        "recent Bio-Formats/Fiji/QuPath, libtiff, tifffile/napari)")
    p.add_argument("--out", required=True, help="output .png, .jpg, .tif or .ome.tif")
    return p


def model_name_of(spec: shared.ModelSpec) -> str:
    if spec.exported is not None:
        from allen_sr.export.runtime import read_config

        return str(read_config(spec.exported)["model"])
    from allen_sr.decoding import checkpoints

    return spec.model or checkpoints.checkpoint_model(checkpoints.find_checkpoint(spec.output_dir))


@dataclass
class TiledModel:
    """A model as tiled prediction sees it."""

    predict: tiling.Predict
    factor: int
    channels: int
    tile: int
    overlap: int
    context: int
    batch_tiles: int
    exact_tile: bool
    min_tile: int
    describe: str
    close: Callable[[], None]
    weights: str  # the checkpoint prefix or export folder it was read from
    ramp: int | None = None  # input px of blending at most, centred in each overlap (None: all of it)


def _describe(name: str, decoder: Any) -> str:
    """The model's line in the summary: ``name``, plus whether the decoder averages 8 transforms."""
    return name + (" (8-fold averaging)" if getattr(decoder, "tta", False) else "")


def open_tiled_model(spec: shared.ModelSpec, options: Options, progress: bool) -> TiledModel:
    """Open the checkpoint and wrap its decoder as a function of uint8 tiles."""
    in_size, out_size, channels = shared.model_shape(spec)
    factor = out_size // in_size
    model = model_name_of(spec)
    if model == CONV_MODEL:
        opened = shared.open_model(spec, target_shape=(None, None))
        dec = opened.decoder
        tile = options.tile or CONV_TILE
        overlap = options.overlap if options.overlap is not None else min(2 * dec.radius + RAMP, tile // 2)
        # A single prediction leaves the model rounded (uint8: a quarter of the bytes to blend and
        # copy); the 8-fold average stays continuous until it is blended.
        predict = dec.predict if getattr(dec, "tta", False) else dec.decode
        return TiledModel(predict, factor, channels, tile, overlap, dec.radius,
                          options.batch_tiles or 1, False, in_size,
                          _describe(f"{model} {'onnx' if spec.exported else 'one pass'}", dec),
                          dec.close, opened.checkpoint, RAMP)
    if options.tile not in (None, in_size):
        raise ValueError(f"--tile {options.tile}: {model} takes only {in_size}x{in_size} px inputs "
                         f"(problem {spec.problem or spec.exported}); leave --tile out")
    opened = shared.open_model(spec)
    batch = options.batch_tiles or TRANSFORMER_BATCH
    kwargs = shared.decode_kwargs(spec, opened.mode, progress=False)
    kwargs["batch_size"] = batch

    def predict(x: np.ndarray) -> np.ndarray:
        return opened.decoder.decode(x, **kwargs).astype(np.float32)

    overlap = options.overlap if options.overlap is not None else in_size // 2
    return TiledModel(predict, factor, channels, in_size, overlap, 0, batch, True, in_size,
                      _describe(f"{model} {opened.mode} ({type(opened.decoder).__name__})", opened.decoder),
                      getattr(opened.decoder, "close", lambda: None), opened.checkpoint)


def allen_section(image_id: int, out: Path, downsample: int, api_base: str | None,
                  download_dir: str | None, progress: bool) -> tuple[str, float | None]:
    """Download one Allen section (or reuse a verified copy); (path, um per px or None)."""
    from allen_sr.data import allen_api, allen_urls
    from allen_sr.data.download import download_images

    base = api_base or allen_urls.DEFAULT_API_BASE
    folder = Path(download_dir) if download_dir else out.parent
    report = download_images([image_id], folder, api_base=base, downsample=downsample or None,
                             progress=progress)
    if not report.ok:
        reason = report.failed.get(image_id, "not downloaded").splitlines()[0]
        raise ValueError(f"--image_id {image_id}: the download failed ({reason}); "
                         "check the id and --api_base, then run again")
    size = None
    try:
        with allen_api.AllenClient(base) as client:
            rows = client.rma_query(f"model::SectionImage,rma::criteria,[id$eq{int(image_id)}]")
        row = next((r for r in rows if int(r.get("id", -1)) == image_id), None)
        if row and row.get("resolution"):
            size = float(row["resolution"]) * 2 ** downsample
    except Exception as exc:  # noqa: BLE001 - the pixel size is a nicety; the image is there
        print(f"note: no pixel size for section {image_id} ({str(exc).splitlines()[0]})", file=sys.stderr)
    return str(folder / f"{image_id}.jpg"), size


class PreviewTap:
    """Passes bands through and keeps the rows and columns of a preview window."""

    def __init__(self, box: tuple[int, int, int, int] | None) -> None:
        self.box, self.parts, self.y = box, [], 0  # box: top, left, height, width (output px)

    def __call__(self, bands: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for band in bands:
            if self.box is not None:
                top, left, h, w = self.box
                a, b = max(top, self.y), min(top + h, self.y + band.shape[0])
                if a < b:
                    self.parts.append(band[a - self.y:b - self.y, left:left + w].copy())
            self.y += band.shape[0]
            yield band


def preview_box(region: sources.ImageSource, size: int) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) input px of a centred square of ``size`` px, or None."""
    if size <= 0:
        return None
    h, w = min(size, region.height), min(size, region.width)
    return (region.height - h) // 2, (region.width - w) // 2, h, w


def compare_path(out: Path) -> Path:
    name = out.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg"):
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
            break
    return out.with_name(f"{name}.compare.png")


def upscale(spec: shared.ModelSpec, image_path: str, out_path: str, region: Region = Region(),
            progress: bool = True, options: Options = Options()) -> dict[str, Any]:
    """Enlarge ``region`` of ``image_path`` into ``out_path``; returns what was done (a summary)."""
    out = Path(out_path)
    writers.output_kind(out)
    writers.check_writable(out)
    base = sources.open_image(image_path, options.level, options.pixel_size_um)
    try:
        return upscale_source(spec, base, out, region, progress, options, resume.file_stamp(image_path))
    finally:
        base.close()


def resume_key(spec: shared.ModelSpec, tm: TiledModel, layout: tiling.TileLayout, image: dict[str, Any],
               region: Region, options: Options) -> dict[str, Any]:
    """Everything the output rows depend on: a saved row is reused only if all of it is equal."""
    weights = Path(tm.weights)
    return {"image": image, "level": options.level,
            "region": [region.left, region.top, layout.width, layout.height],
            "model": resume.file_stamp(weights / "config.json" if weights.is_dir() else f"{weights}.index"),
            "decoder": tm.describe, "hparams": spec.hparams, "temperature": spec.temperature,
            "seed": spec.seed, "tiles": [layout.tile_h, layout.tile_w, tm.overlap, tm.batch_tiles, layout.ramp],
            "factor": tm.factor, "channels": tm.channels}


def upscale_source(spec: shared.ModelSpec, base: sources.ImageSource, out: Path, region: Region,
                   progress: bool, options: Options, image: dict[str, Any]) -> dict[str, Any]:
    """Enlarge ``region`` of ``base`` into ``out``; ``image`` identifies the input file (its
    :func:`resume.file_stamp`) for resuming."""
    cut = sources.crop_source(base, region.left, region.top, region.width, region.height)
    tm = open_tiled_model(spec, options, progress)
    try:
        layout = tiling.plan_tiles(cut.height, cut.width, tm.tile, tm.overlap, tm.context,
                                   tm.min_tile, cut.name, tm.exact_tile, tm.ramp)
        f = tm.factor
        out_h, out_w = cut.height * f, cut.width * f
        size_um = cut.pixel_size_um / f if cut.pixel_size_um else None
        box = preview_box(cut, options.preview_size)
        tap = PreviewTap(None if box is None else tuple(v * f for v in box))
        to_model = (lambda block: to_grey(block)) if tm.channels == 1 else None
        print(f"upscaling {cut.name} {cut.width}x{cut.height} px x{f} -> {out_w}x{out_h} px "
              f"({out_w * out_h / 1e6:.1f} MP): {layout.tiles} tiles of {layout.tile_w}x{layout.tile_h} px, "
              f"overlap {tm.overlap} px, {tm.describe}", flush=True)
        store = resume.RowStore(out, resume_key(spec, tm, layout, image, region, options), out_w, tm.channels)
        if options.restart:
            store.discard()
        done = store.open()
        if done:
            print(f"resuming: {done} of {out_h} output rows were saved by an interrupted run "
                  f"({store.folder}); --restart predicts them again", flush=True)
        start = time.perf_counter()
        bands = tiling.predict_bands(cut, layout, tm.predict, f, tm.batch_tiles, progress,
                                     tm.channels, to_model, first_row=done)
        writers.write_image(out, tap(itertools.chain(store.replay(), store.record(bands, done))),
                            out_h, out_w, tm.channels, size_um, options.compression)
        seconds = time.perf_counter() - start
        store.discard()
    finally:
        tm.close()
    summary = {"output": str(out), "width": out_w, "height": out_h, "tiles": layout.tiles,
               "seconds": round(seconds, 3), "resumed_rows": done,
               "output_mp_per_s": (out_h - done) * out_w / 1e6 / seconds,
               "pixel_size_um": size_um}
    if box is not None and tap.parts:
        top, left, h, w = box
        small = cut.read(top, left, h, w)
        small = to_grey(small) if tm.channels == 1 else small
        model = np.concatenate(tap.parts)
        grid = pictures.prediction_grid(
            [[metrics.upscale(small, f, "nearest"), metrics.upscale(small, f, "bicubic"), model]],
            columns=("input (nearest)", "bicubic", "model"), scale=1)
        summary["preview"] = str(pictures.save_png(grid, compare_path(out)))
    print(f"done in {seconds:.1f} s ({summary['output_mp_per_s']:.3g} output MP/s): wrote {out} "
          f"({out_w}x{out_h} px" + (f", {size_um:.4g} um/px" if size_um else "") + ")"
          + (f" and {summary['preview']}" if "preview" in summary else ""), flush=True)
    return summary


def upscale_main(argv: list[str] | None = None) -> int:
    args = shared.parse(build_parser(), argv)

    def body() -> None:
        batch = args.batch_size
        args.batch_size = batch or 1
        spec = shared.model_spec(args)
        if batch is not None and batch < 1:
            raise ValueError(f"--batch_size must be >= 1, got {batch}")
        options = Options(args.tile, args.overlap, args.level, batch, args.preview_size, args.pixel_size,
                          args.restart, args.compression)
        region = Region(args.left, args.top, args.width, args.height)
        progress = not args.no_progress
        image = args.image
        if args.image_id is not None:
            out = Path(args.out)
            writers.output_kind(out)
            writers.check_writable(out)
            image, size = allen_section(args.image_id, out, args.downsample, args.api_base,
                                        args.download_dir, progress)
            if options.pixel_size_um is None and size:
                options = Options(**{**options.__dict__, "pixel_size_um": size})
        upscale(spec, image, args.out, region, progress, options)

    return shared.run_command("upscale", body)


if __name__ == "__main__":
    sys.exit(upscale_main())


__all__ = ["Region", "Options", "build_parser", "upscale", "upscale_main", "compare_path"]
