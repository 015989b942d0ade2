"""`Upscaler`: enlarge images with a trained model, from Python; `allen-sr upscale` wraps it.

    from allen_sr import Upscaler

    with Upscaler.open() as up:                    # the default pretrained model
        big = up.predict(small)                    # uint8 [h, w, 3] -> uint8 [4h, 4w, 3]
        up.predict_file("section.tif", "section_x4.ome.tif", region=(0, 0, 2000, 2000))

The image is cut into overlapping tiles; each tile is predicted and the predictions are blended
with smooth weights (`allen_sr.inference.blend`), so no seam shows. The conv model predicts large
tiles with enough context that the result equals one prediction of the whole image; the Image
Transformer decodes its 8x8 -> 32x32 tiles in large batches, overlapping by half a tile. In
:meth:`Upscaler.predict_file` rows are written as they are predicted (memory depends on the tile
batch, not on the image), nothing appears under the output name until it is complete, and
finished rows are kept in a hidden folder next to it (``.OUT.resume``) so that an interrupted
call, made again, predicts only the rest.
"""
from __future__ import annotations

import itertools
import math
import os
import numbers
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from allen_sr import fileio
from allen_sr.api.arrays import InputImageError, Region, array_source, as_region, image_jpeg_quality, read_image
from allen_sr.api.models import (ModelSpec, decode_kwargs, describe_source, model_shape, no_distribution,
                                 open_model, resolve, trained_degradation, uncertainty_calibration)
from allen_sr.api.outputs import (PreviewTap, check_output_names, compare_path, decode_uncertain, encode_uncertain,
                                  preview_box, split_uncertain, strided_rows, uncertainty_paths,
                                  HEAT_MAP_PIXELS, SD_BYTES, pixel_size_text)
from allen_sr.decoding.modes import check_one_value_mode, check_seed
from allen_sr.errors import InvalidInputError, count
from allen_sr.evaluation import metrics, pictures
from allen_sr.data.stats import to_grey
from allen_sr.inference import resume, sources, tiling, writers
from allen_sr.inference.input_check import InputCheck, check_file, check_input

CONV_MODEL = "img2img_conv_sr"
CONV_TILE = 384  # input px: 1536 px output tiles; larger tiles gain < 5% speed and cost memory
RAMP = 16  # input px of smooth blending beyond the conv model's context on each side
TRANSFORMER_BATCH = 256  # tiles decoded together by the Image Transformer's decoders

__all__ = ["Upscaler", "Region", "Options", "InputImageError", "CONV_TILE", "RAMP", "TRANSFORMER_BATCH",
           "compare_path"]

Log = Callable[[str], None]


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

    def __post_init__(self) -> None:
        for name, flag in (("tile", "--tile"), ("overlap", "--overlap"), ("batch_tiles", "--batch_size"),
                           ("level", "--level"), ("preview_size", "--preview_size")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise InvalidInputError(f"{name}={value!r} ({flag}): give a whole number")
            if name in ("tile", "batch_tiles") and value is not None and value < 1:
                raise InvalidInputError(f"{name} ({flag}) must be >= 1, got {value}")
        size = self.pixel_size_um
        if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Real) or not 0 < size < np.inf):
            raise InvalidInputError(f"pixel size {self.pixel_size_um} um per input px (--pixel_size): "
                                    "give a positive number")


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
    # tiles -> [N, H, W, C + 1] float32: values and each output pixel's uncertainty (sd, grey levels) at temperature
    predict_uncertain: Callable[[np.ndarray, float], np.ndarray] | None = None
    calibrate: Callable[[], Any] | None = None  # -> the model's uncertainty Calibration
    keyed: bool = False  # the predict functions also take the tiles' (top, left) in the image: samples keyed on them
    decoder: str = ""  # describe without naming where the model came from (made_by, resume key); "": describe
    prepare: Callable[[], None] = lambda: None  # loads what uncertainty needs: UserError naming a damaged file


def _describe(name: str, decoder: Any) -> str:
    """The model's line in the summary: ``name``, plus whether the decoder averages 8 transforms."""
    return name + (" (8-fold averaging)" if getattr(decoder, "tta", False) else "")


def model_name_of(spec: ModelSpec) -> str:
    if spec.exported is not None:
        from allen_sr.export.runtime import read_config
        return str(read_config(spec.exported)["model"])
    from allen_sr.decoding import checkpoints
    return spec.model or checkpoints.checkpoint_model(checkpoints.find_checkpoint(spec.output_dir))


def open_tiled_model(spec: ModelSpec, options: Options) -> TiledModel:
    """Open the model and wrap its decoder as a function of uint8 tiles."""
    in_size, out_size, channels = model_shape(spec)
    factor = out_size // in_size
    check_pixel_size(options.pixel_size_um, factor)
    model = model_name_of(spec)
    if model == CONV_MODEL:
        # once here, not image by image in a folder run (the default overlap is at most half a tile)
        tiling.check_tile(options.tile or CONV_TILE, options.overlap or 0, in_size)
        opened = open_model(spec, target_shape=(None, None))
        dec = opened.decoder
        uncertain = getattr(dec, "reports_distributions", False)  # the probabilistic head
        if spec.mode is not None:  # a mode asked for, not the export's: greedy and mean are its prediction
            try:
                check_one_value_mode(spec.mode, model, uncertain)
            except InvalidInputError:
                dec.close()
                raise
        tile = options.tile or CONV_TILE
        overlap = options.overlap if options.overlap is not None else min(2 * dec.radius + RAMP, tile // 2)
        if overlap < 2 * dec.radius:  # each tile's context band, both sides: the whole image's prediction
            need = 2 * dec.radius
            warnings.warn(f"tiles of {tile} px overlapping by {overlap} px, less than the {need} px this model needs "
                          "to predict as from the whole image: the output can show seams where tiles meet; "
                          f"--tile {max(tile, 2 * need)} --overlap {need} gives none")
        # A single prediction leaves the model rounded (uint8: a quarter of the bytes to blend and
        # copy); the 8-fold average stays continuous until it is blended.
        predict = dec.predict if getattr(dec, "tta", False) else dec.decode
        engine = "onnx" if spec.exported else "one pass"  # a shipped model by name or by folder: one model
        shown = f"{model} pretrained {spec.pretrained}" if spec.pretrained else f"{model} {engine}"

        def predict_laplace(x: np.ndarray, temperature: float) -> np.ndarray:
            from allen_sr.decoding.uncertainty import pixel_uncertainty
            values, sd = dec.predict_uncertain(x, temperature)
            return np.concatenate([values, pixel_uncertainty(sd)[..., None]], axis=-1)

        return TiledModel(predict, factor, channels, tile, overlap, dec.radius, options.batch_tiles or 1, False,
                          in_size, _describe(shown, dec), dec.close, opened.checkpoint, RAMP,
                          predict_uncertain=predict_laplace if uncertain else None,
                          calibrate=(lambda: uncertainty_calibration(spec, opened)) if uncertain else None,
                          decoder=_describe(f"{model} {engine}", dec),
                          prepare=getattr(dec, "load_distribution", lambda: None))
    if options.tile not in (None, in_size):
        raise InvalidInputError(f"tile {options.tile}: {model} takes only {in_size}x{in_size} px inputs "
                        f"(problem {spec.problem or spec.exported}); leave the tile size out")
    opened = open_model(spec)
    batch = options.batch_tiles or TRANSFORMER_BATCH
    kwargs = decode_kwargs(spec, opened.mode, progress=False)
    kwargs["batch_size"] = batch
    check_seed(spec.seed)
    # Sampling: each tile draws from its own stream, keyed on the seed and where the tile is in the
    # whole image: the same for any batch size, a region or a resumed run; no two tiles share one.

    def predict(x: np.ndarray, origins: list[tuple[int, int]] | None = None) -> np.ndarray:
        return opened.decoder.decode(x, **kwargs, keys=origins).astype(np.float32)

    def predict_uncertain(x: np.ndarray, temperature: float,
                          origins: list[tuple[int, int]] | None = None) -> np.ndarray:
        from allen_sr.decoding.uncertainty import Recorder, pixel_uncertainty

        recorder = Recorder((temperature,))
        values = opened.decoder.decode(x, **kwargs, recorder=recorder, keys=origins).astype(np.float32)
        return np.concatenate([values, pixel_uncertainty(recorder.shaped("std")[0])[..., None]], axis=-1)

    overlap = options.overlap if options.overlap is not None else in_size // 2
    tiling.check_tile(in_size, overlap, in_size)  # once here, not image by image in a folder run
    if overlap == 0:  # tiles decoded alone differ at their edges; a blend of even 1 px hid it (measured)
        warnings.warn(f"tiles of {in_size} px that abut (--overlap 0): the output will show seams where tiles "
                      f"meet; --overlap {in_size // 2} (half a tile, the default) blends them away")
    uncertain = getattr(opened.decoder, "reports_distributions", False)
    return TiledModel(predict, factor, channels, in_size, overlap, 0, batch, True, in_size,
                      _describe(f"{model} {opened.mode} ({type(opened.decoder).__name__})", opened.decoder),
                      getattr(opened.decoder, "close", lambda: None), opened.checkpoint,
                      predict_uncertain=predict_uncertain if uncertain else None,
                      calibrate=(lambda: uncertainty_calibration(spec, opened)) if uncertain else None, keyed=True)


def check_pixel_size(size_um: float | None, factor: int) -> None:
    """InvalidInputError unless ``size_um`` (um per input px) gives output pixels every output format holds."""
    low, high = writers.PIXEL_SIZE_UM
    if size_um is not None and not low * factor <= size_um <= high * factor:
        raise InvalidInputError(f"pixel size {size_um:g} um per input px (--pixel_size): give {low * factor:g} to "
                                f"{high * factor:g} um (output pixels of {low:g} to {high:g} um at x{factor})")


class Upscaler:
    """A model opened once, for any number of images. Use :meth:`open` to make one.

    Example::

        from allen_sr import Upscaler

        with Upscaler.open() as up:            # or "conv-fast", an export or a run folder
            big = up.predict(small)            # uint8 [h, w, 3] -> uint8 [4h, 4w, 3]

    :meth:`predict` gives exactly the pixels `allen-sr upscale` writes for the same image and
    model. Errors a user can fix (a name, a file, a value) are :class:`allen_sr.errors.UserError`.
    """

    def __init__(self, spec: ModelSpec, options: Options = Options()) -> None:
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"Upscaler({spec!r}): open a model with Upscaler.open({spec!r}) (a shipped model's "
                            "name, an export or a run folder; None for the default)")
        self.spec, self.options = spec, options
        self._tiled = open_tiled_model(spec, options)
        self._calibration: Any = None
        self._trained = trained_degradation(spec)  # what the input check compares with
        self._made_by: dict[str, Any] | None = None

    @classmethod
    def open(cls, model: str | os.PathLike[str] | None = None, *, tile: int | None = None,
             overlap: int | None = None, batch_tiles: int | None = None, **decoding: Any) -> "Upscaler":
        """Open ``model``: None for the default pretrained model, a pretrained model's name
        (`allen_sr.pretrained.available`), an `allen-sr export` folder, or a t2t-trainer run
        folder or checkpoint prefix (its problem and hparams set read from its flags.txt, or
        given as ``problem=`` and ``hparams_set=``). ``tile``/``overlap`` (input px) and
        ``batch_tiles`` change the tiling; ``decoding`` takes ``mode``, ``temperature``,
        ``seed``, ``decoder``, ``hparams`` as the command line does.
        """
        spec = resolve(model, **decoding)
        return cls(spec, Options(tile=tile, overlap=overlap, batch_tiles=batch_tiles))

    # ----------------------------------------------------------------- what it is
    @property
    def factor(self) -> int:
        """How many times larger each side of the output is."""
        return self._live().factor

    @property
    def min_input(self) -> int:
        """The smallest input it enlarges, in px a side."""
        tm = self._live()
        return tm.tile if tm.exact_tile else tm.min_tile

    @property
    def channels(self) -> int:
        """3 for RGB models, 1 for greyscale ones (their output is [H, W, 1])."""
        return self._live().channels

    @property
    def describe(self) -> str:
        """The model and decoder, as the command's summary names them."""
        return self._live().describe

    @property
    def source(self) -> str:
        """Where the model came from: ``pretrained NAME``, an export or a run folder."""
        return describe_source(self.spec)

    @property
    def made_by(self) -> dict[str, Any]:
        """What decides an output's pixels besides the input, as a folder run records it beside each
        output: the weights (a digest of their content), the decoder and its settings; ``source``
        names the model for people and is not compared."""
        tm = self._live()
        if self._made_by is None:
            spec = self.spec
            self._made_by = {"source": self.source, "weights": resume.weights_digest(tm.weights),
                             "decoder": tm.decoder or tm.describe, "hparams": spec.hparams, "mode": spec.mode,
                             "temperature": spec.temperature, "seed": spec.seed}
        return self._made_by

    @property
    def calibration(self) -> Any:
        """The `allen_sr.decoding.uncertainty.Calibration` of the uncertainty maps (fitted on the
        run's dev split on first use); UserError for a model without a distribution."""
        tm = self.require_distribution()
        if self._calibration is None:
            self._calibration = tm.calibrate()
        return self._calibration

    def require_distribution(self) -> TiledModel:
        """UserError for a model without a distribution (no uncertainty maps), to be said before any work."""
        tm = self._live()
        if tm.calibrate is None:
            raise InvalidInputError(no_distribution(tm.describe))
        tm.prepare()  # a conv export's distribution.onnx: missing or damaged is said here, not image by image
        return tm

    def _live(self) -> TiledModel:
        if self._tiled is None:
            raise InvalidInputError("this Upscaler is closed; open another")
        return self._tiled

    def __repr__(self) -> str:
        tm = self._tiled
        what = "closed" if tm is None else f"{tm.describe}, x{tm.factor}, {count(tm.channels, 'channel')}"
        return f"<Upscaler {self.source}: {what}>"

    def close(self) -> None:
        """Release the model (sessions, runtimes); the object is unusable afterwards."""
        if self._tiled is not None:
            self._tiled.close()
            self._tiled = None

    def __enter__(self) -> "Upscaler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- inputs
    def check(self, image: Any, level: int = 0, *, bits: int | None = None) -> InputCheck:
        """Is ``image`` (as :meth:`predict` takes it; a file's or a Pillow JPEG's quality is read
        from its tables) within the inputs this model trained on? Its JPEG quality and estimated
        noise, with a warning for each beyond the model's recorded `degradation`
        (`allen_sr.inference.input_check`); InvalidInputError for an image :meth:`predict` refuses as
        too small. :meth:`predict_file` runs this on every input and puts it in its summary."""
        smallest = self.min_input
        if isinstance(image, (str, os.PathLike)):
            return check_file(os.path.expanduser(os.fspath(image)), self._trained, level, min_side=smallest)
        source = array_source(image, bits)
        tiling.check_region_size(source.height, source.width, smallest, source.name)
        return check_input(source, self._trained, image_jpeg_quality(image))

    # ----------------------------------------------------------------- prediction
    def _layout(self, source: sources.ImageSource, options: Options) -> tiling.TileLayout:
        tm = self._live()
        return tiling.plan_tiles(source.height, source.width, tm.tile, tm.overlap, tm.context,
                                 tm.min_tile, source.name, tm.exact_tile, tm.ramp)

    def _bands(self, source: sources.ImageSource, layout: tiling.TileLayout, progress: bool,
               first_row: int = 0, uncertainty: bool = False) -> Iterator[np.ndarray]:
        """uint8 bands of output rows: the image's channels, and with ``uncertainty`` SD_BYTES more
        holding each pixel's uncertainty (its float32 sd in grey levels, `outputs.encode_uncertain`)."""
        tm = self._live()
        to_model = to_grey if tm.channels == 1 else None
        # where a region (with its margin) starts in its image: sampled tiles draw as in the whole image's run
        origin = (getattr(source, "top", 0), getattr(source, "left", 0)) if tm.keyed else None
        if not uncertainty:
            return tiling.predict_bands(source, layout, tm.predict, tm.factor, tm.batch_tiles, progress,
                                        tm.channels, to_model, first_row=first_row, origin=origin)
        temperature = self.calibration.temperature
        bands = tiling.predict_bands(source, layout, lambda x, *o: tm.predict_uncertain(x, temperature, *o),
                                     tm.factor, tm.batch_tiles, progress, tm.channels + 1, to_model,
                                     first_row=first_row, rounded=False, origin=origin)
        return (encode_uncertain(band, tm.channels) for band in bands)

    def predict(self, image: Any, progress: bool = False, uncertainty: bool = False, *,
                bits: int | None = None) -> Any:
        """The enlarged ``image``, uint8 [h * factor, w * factor, channels], tiled and blended as
        `allen-sr upscale` does. ``image``: a file path (read as the command reads it:
        :func:`~allen_sr.api.arrays.read_image`), a Pillow image (converted as its file would be, its
        EXIF orientation applied) or an array [h, w] or [h, w, 1|2|3|4] (grey, grey + alpha, RGB,
        RGBA) of uint8, uint16 (white level: ``bits`` significant bits, else guessed from the
        brightest sample, with a warning) or floats (0-1 or 0-255); alpha is put on white with a
        warning when any pixel is transparent. ``uncertainty`` (models with a distribution): (image,
        float32 [h * factor, w * factor] map of each pixel's calibrated uncertainty, sd in grey levels)."""
        if isinstance(image, (str, os.PathLike)):
            if bits is not None:
                raise InvalidInputError(f"bits={bits} with a file: its depth is read from the file; leave bits out")
            image = read_image(image)
        source = array_source(image, bits)
        layout = self._layout(source, self.options)
        out = np.concatenate(list(self._bands(source, layout, progress, uncertainty=uncertainty)), axis=0)
        if not uncertainty:
            return out
        return out[..., :self.channels], decode_uncertain(out, self.channels)

    def predict_file(self, src: str | os.PathLike[str], dst: str | os.PathLike[str],
                     region: Region | tuple[int, ...] | None = None, level: int = 0, *,
                     progress: bool = False, preview_size: int = 0, pixel_size_um: float | None = None,
                     restart: bool = False, compression: str = "deflate",
                     preview_to: str | os.PathLike[str] | None = None, uncertainty: bool = False,
                     log: Log | None = None) -> dict[str, Any]:
        """Enlarge ``region`` (input px at ``level`` of a pyramidal TIFF) of the image file
        ``src`` into ``dst`` (.png, .jpg, .tif or .ome.tif: a tiled pyramidal BigTIFF with the
        pixel size when known; a region is read with the pixels around it as the model's context,
        so its output is the crop of the whole image's); returns a summary, with what
        :meth:`check` found about the input (``input_check``; its warnings also go to ``log``).
        ``preview_size`` > 0 also writes ``DST-stem.compare.png`` (nearest | bicubic | model of a
        centred square of that many input px) beside ``dst`` or in the folder ``preview_to``. ``uncertainty`` (models
        with a distribution) also writes ``DST.uncertainty.tif`` (float32 sd in grey levels, pyramidal
        like a TIFF output) and ``DST.uncertainty.png`` (a heat map with its colour bar), and adds
        the map to the compare picture. ``log`` receives progress messages (none by default).
        """
        options = replace(self.options, level=level, preview_size=preview_size, pixel_size_um=pixel_size_um,
                          restart=restart, compression=compression)
        src, out = os.path.expanduser(os.fspath(src)), Path(dst).expanduser()
        preview_to = None if preview_to is None else Path(preview_to).expanduser()
        writers.output_kind(out)
        check_pixel_size(pixel_size_um, self.factor)
        if uncertainty:
            self.require_distribution()
        preview = compare_path(out) if preview_to is None else Path(preview_to) / compare_path(out).name
        check_output_names(src, [out] + ([preview] if preview_size > 0 else [])
                           + (list(uncertainty_paths(out)) if uncertainty else []))
        if preview_to is not None and preview_size > 0:
            fileio.check_output_folder(preview_to, "the preview folder")
        writers.check_writable(out)
        base = sources.open_image(os.fspath(src), level, pixel_size_um)
        try:
            return self._write(base, out, as_region(region), progress, options,
                               resume.file_stamp(os.fspath(src)), preview, log or (lambda _: None), uncertainty)
        finally:
            base.close()

    def _resume_key(self, layout: tiling.TileLayout, image: dict[str, Any], region: Region, size: tuple[int, int],
                    read: list[int], options: Options, uncertainty: bool) -> dict[str, Any]:
        """Everything the output rows depend on: a saved row is reused only if all of it is equal."""
        tm, spec = self._tiled, self.spec
        weights = Path(tm.weights)
        return {"image": image, "level": options.level, "region": [region.left, region.top, *size], "read": read,
                "model": resume.file_stamp(weights / "config.json" if weights.is_dir() else f"{weights}.index"),
                "decoder": tm.decoder or tm.describe, "hparams": spec.hparams, "temperature": spec.temperature,
                "seed": spec.seed, "tiles": [layout.tile_h, layout.tile_w, tm.overlap, tm.batch_tiles, layout.ramp],
                "factor": tm.factor, "channels": tm.channels,
                "uncertainty": {**self.calibration.as_dict(), "sd": "float32"} if uncertainty else None}

    def _write(self, base: sources.ImageSource, out: Path, region: Region, progress: bool,
               options: Options, image: dict[str, Any], preview: Path, log: Log,
               uncertainty: bool = False) -> dict[str, Any]:
        cut = sources.crop_source(base, region.left, region.top, region.width, region.height)
        tm = self._tiled
        self._layout(cut, options)  # a region smaller than a tile is refused
        # The region is predicted with the pixels around it as context (as inside the whole image:
        # the conv model's receptive radius, the Transformer's overlap) and those rows and columns dropped.
        grown, dy, dx = sources.with_margin(base, cut, tm.overlap if tm.exact_tile else tm.context)
        layout = self._layout(grown, options)
        f = tm.factor
        out_h, out_w = cut.height * f, cut.width * f
        size_um = cut.pixel_size_um / f if cut.pixel_size_um else None
        size_y_um = cut.pixel_size_y_um / f if size_um and cut.pixel_size_y_um else None
        low, high = writers.PIXEL_SIZE_UM
        if size_um and not all(low <= s <= high for s in (size_um, size_y_um or size_um)):  # a file's: ours are checked
            log(f"note: {cut.name} says its pixels are {pixel_size_text(cut.pixel_size_um, cut.pixel_size_y_um)}, "
                f"output pixels of {pixel_size_text(size_um, size_y_um)}: beyond the {low:g} to {high:g} um outputs "
                f"hold, so {out.name} gets no pixel size (--pixel_size gives one)")
            size_um = size_y_um = None
        box = preview_box(cut, options.preview_size)
        tap = PreviewTap(None if box is None else tuple(v * f for v in box))
        checked = check_input(cut, self._trained)
        for warning in checked.warnings:
            log(f"warning: {warning}")
        log(f"upscaling {cut.name} {cut.width}x{cut.height} px x{f} -> {out_w}x{out_h} px "
            f"({out_w * out_h / 1e6:.1f} MP): {count(layout.tiles, 'tile')} of {layout.tile_w}x{layout.tile_h} px, "
            f"overlap {tm.overlap} px, {tm.describe}")
        stored = tm.channels + (SD_BYTES if uncertainty else 0)  # + the uncertainty's bytes
        store = resume.RowStore(out, self._resume_key(layout, image, region, (cut.width, cut.height),
                                                      [region.left - dx, region.top - dy, grown.width, grown.height],
                                                      options, uncertainty), out_w, stored)
        if options.restart:
            store.discard()
        done = store.open()
        if done:
            log(f"resuming: {done} of {out_h} output rows were saved by an interrupted run "
                f"({store.folder}); pass --restart to predict them again")
        start = time.perf_counter()
        predicted = self._bands(grown, layout, progress, dy * f + done, uncertainty)
        if grown is not cut:
            predicted = tiling.region_rows(predicted, dx * f, out_w, out_h - done)
        bands = tap(itertools.chain(store.replay(), store.record(predicted, done)))
        if uncertainty:
            bands = split_uncertain(bands, tm.channels)
            unc_paths = uncertainty_paths(out)
            for path in unc_paths:
                writers.check_writable(path)
        writers.write_image(out, bands, out_h, out_w, tm.channels, size_um, options.compression,
                            pixel_size_y_um=size_y_um)
        seconds = time.perf_counter() - start
        if uncertainty:  # the map from the rows the store keeps until now: memory follows a band, not the image
            from allen_sr.evaluation.uncertainty_pictures import heat_map_with_bar

            stride = math.ceil(math.sqrt(out_h * out_w / HEAT_MAP_PIXELS))  # the heat map's, every stride-th px
            shown_sd: list[np.ndarray] = []
            maps = strided_rows((decode_uncertain(band, tm.channels) for band in store.replay()), stride, shown_sd)
            writers.write_float_tiff(unc_paths[0], maps, out_h, out_w, size_um, size_y_um, options.compression)
            sd = np.concatenate(shown_sd, axis=0)
            heat_map_with_bar(sd, unc_paths[1],
                              label=f"uncertainty: sd in grey levels (temperature {self.calibration.temperature:g})")
        store.discard()
        summary = {"output": str(out), "width": out_w, "height": out_h, "tiles": layout.tiles,
                   "seconds": round(seconds, 3), "resumed_rows": done,
                   "output_mp_per_s": (out_h - done) * out_w / 1e6 / max(seconds, 1e-9),
                   "pixel_size_um": size_um, "pixel_size_y_um": size_y_um or size_um, "model": self.source,
                   "input_check": checked.as_dict()}
        if uncertainty:
            summary["uncertainty"] = [str(p) for p in unc_paths]
            summary["calibration"] = self.calibration.as_dict()
        if box is not None and tap.parts:
            top, left, h, w = box
            small = cut.read(top, left, h, w)
            small = to_grey(small) if tm.channels == 1 else small
            shown = np.concatenate(tap.parts)
            cells = [metrics.upscale(small, f, "nearest"), metrics.upscale(small, f, "bicubic"),
                     shown[..., :tm.channels]]
            columns: tuple[str, ...] = ("input (nearest)", "bicubic", "model")
            if uncertainty:
                from allen_sr.evaluation.uncertainty_pictures import heat, uncertainty_scale

                preview_sd = decode_uncertain(shown, tm.channels)
                cells.append(heat(preview_sd, uncertainty_scale(sd)))
                columns += ("uncertainty (sd)",)
            grid = pictures.prediction_grid([cells], columns=columns, scale=1)
            summary["preview"] = str(pictures.save_png(grid, preview))
        log(f"done in {seconds:.1f} s ({summary['output_mp_per_s']:.3g} output MP/s): wrote {out} "
            f"({out_w}x{out_h} px" + (f", {pixel_size_text(size_um, size_y_um)}" if size_um else "") + ")"
            + (f" and {summary['preview']}" if "preview" in summary else ""))
        return summary
