"""`allen-sr upscale`: enlarge a whole image (or a region of it), or a folder of images, by the
model's factor (4). Without model flags it uses the default pretrained model (`allen-sr models`).

The image is cut into overlapping tiles whose predictions are blended without seams (the conv
model's result equals one prediction of the whole image); rows are written as they are predicted.
This command wraps `allen_sr.Upscaler` (`allen_sr.api.upscaler`), which gives the same pixels in Python.

Input: PNG, JPEG, TIFF, BigTIFF, OME-TIFF, a pyramidal whole-slide TIFF or a Zeiss CZI (--level
picks the resolution level; read region by region), --image_id (an Allen section fetched first), or
--images DIR|GLOB with --out_dir DIR: one output per input under its own name, finished outputs
skipped on a rerun (those of a changed input made again; a folder of another model's outputs
refused), unreadable inputs named and skipped, a summary at the end.
Output: .png / .jpg (up to 100 MP), or .tif / .ome.tif: a tiled, compressed, pyramidal BigTIFF
with the physical pixel size when known. Also OUT-stem.compare.png: a preview region,
input enlarged with nearest | bicubic | model (folders: only with --preview_dir). Nothing appears
under OUT until it is complete.

Checked first: an input whose JPEG quality (read from the file) or estimated noise lies beyond
what the model trained on gets a warning naming it (allen_sr.inference.input_check); it is still
enlarged. --check does only that, for an image or a folder, without loading the model: one line
per image, nothing enlarged or written (--report FILE.csv|.json keeps the table); exit code 1 when
an image is beyond the training or unreadable.

Resumable: finished output rows are kept in a hidden folder next to OUT (``.OUT.resume``,
`allen_sr.inference.resume`) until OUT is written; rerunning the same command after an
interruption predicts only the rest (--restart: start from the top).
"""
from __future__ import annotations

import argparse
import posixpath
import sys
from pathlib import Path
from typing import Callable

from allen_sr import fileio
from allen_sr.api.outputs import compare_path, shared_extras, uncertainty_paths
from allen_sr.api.upscaler import (CONV_MODEL, CONV_TILE, RAMP, TRANSFORMER_BATCH, Options, Region, Upscaler,
                                   model_name_of)
from allen_sr.api.models import ModelSpec, describe_source, model_shape, no_distribution, trained_degradation
from allen_sr.api.remote import is_url
from allen_sr.commands import args as shared
from allen_sr.inference import writers
from allen_sr.errors import InvalidInputError, count


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="allen-sr upscale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    shared.add_model_args(p, batch_help=f"tiles decoded together (default: 1 for a conv model, whose tiles are "
                                        f"large; {TRANSFORMER_BATCH} for an Image Transformer)")
    p.set_defaults(batch_size=None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image",
                     help="image file to enlarge (PNG, JPEG, TIFF, BigTIFF, OME-TIFF, slide TIFF, Zeiss CZI)")
    src.add_argument("--image_id", type=int, help="an Allen section image id, downloaded first")
    src.add_argument("--images", metavar="DIR|GLOB",
                     help="a folder of images or a quoted glob ('slides/*.tif'): each is enlarged into --out_dir")
    p.add_argument("--downsample", type=int, default=0, help="with --image_id: halve the section N times (default 0)")
    p.add_argument("--api_base", default=None, help="with --image_id: Allen API base URL")
    p.add_argument("--download_dir", default=None,
                   help="with --image_id: where the section goes (default: OUT's folder)")
    p.add_argument("--level", type=int, default=0, help="resolution level of a pyramidal TIFF or a CZI (0 = full)")
    p.add_argument("--left", type=int, default=0, help="region left edge, px, in the image as viewers show it "
                   "(a JPEG's EXIF or a TIFF's orientation applied; default 0)")
    p.add_argument("--top", type=int, default=0, help="region top edge, px (default 0)")
    p.add_argument("--width", type=int, help="region width, px (default: to the right edge)")
    p.add_argument("--height", type=int, help="region height, px (default: to the bottom edge)")
    p.add_argument("--tile", type=int, help=f"largest tile side in input px (conv model: default {CONV_TILE}; "
                                            "Image Transformer: its input size, 8)")
    p.add_argument("--overlap", type=int, help="tile overlap in input px (conv: default its context x 2 "
                                               f"+ {RAMP}; Image Transformer: half a tile)")
    p.add_argument("--pixel_size", type=float, help="um per input px (replaces what the file or the Allen API says)")
    p.add_argument("--preview_size", type=int, default=128, help="input px of the compare picture (0: none)")
    p.add_argument("--uncertainty", action="store_true",
                   help="Image Transformers and probabilistic conv models: also write OUT.uncertainty.tif "
                        "(float32 sd per pixel, grey levels, calibrated on the run's dev split) and "
                        "OUT.uncertainty.png (heat map), and add the map to the compare picture")
    p.add_argument("--check", action="store_true",
                   help="only check the inputs: each image's JPEG quality (read from the file) and estimated "
                        "noise against what the model trained on, one line per image; nothing is enlarged "
                        "or written (no --out needed); exit code 1 if an image is beyond or unreadable")
    p.add_argument("--report", metavar="FILE", help="with --check: also write the table to FILE (.csv or .json)")
    p.add_argument("--restart", action="store_true",
                   help="predict everything again, ignoring the rows an interrupted run saved")
    p.add_argument("--compression", choices=sorted(writers.TIFF_COMPRESSION), default="deflate",
                   help="TIFF output: deflate (default; every reader) or zstd (less CPU, same size; "
                        "recent Bio-Formats/Fiji/QuPath, libtiff, tifffile/napari)")
    p.add_argument("--out", help="output .png, .jpg, .tif or .ome.tif (with --image, --image_id)")
    p.add_argument("--out_dir", help="with --images: folder for the outputs (created if missing), or a URL "
                                     "(gs://bucket/out, s3://..., with its fsspec backend); each keeps its "
                                     "input's name (types that cannot be written become .tif)")
    p.add_argument("--preview_dir", help="with --images: write each image's compare picture here")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="with --images: one task per image on a Dask cluster: a scheduler (tcp://host:8786), "
                        "or local[:N] for N worker processes started here (default 2); inputs, --out_dir and "
                        "--preview_dir on storage every worker shares")
    return p


def allen_section(image_id: int, out: Path, downsample: int, api_base: str | None,
                  download_dir: str | None, progress: bool) -> tuple[str, float | None]:
    """Download one Allen section (or reuse a verified copy); (path, um per px or None)."""
    from allen_sr.data import allen_api, allen_urls
    from allen_sr.data.download import download_images

    base = api_base or allen_urls.DEFAULT_API_BASE
    allen_urls.check_api_base(base)
    if image_id < 1 or downsample < 0:
        raise InvalidInputError(f"--image_id {image_id}, --downsample {downsample}: give a section image id "
                                "(a positive number) and a downsampling of 0 or more")
    folder = Path(download_dir) if download_dir else out.parent
    report = download_images([image_id], folder, api_base=base, downsample=downsample or None,
                             progress=progress)
    if not report.ok:
        reason = report.failed.get(image_id, "not downloaded").splitlines()[0]
        raise InvalidInputError(f"--image_id {image_id}: the download failed ({reason}); "
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


def options_of(args: argparse.Namespace) -> Options:
    return Options(args.tile, args.overlap, args.level, args.batch_size, args.preview_size, args.pixel_size,
                   args.restart, args.compression)


def check_outputs(args: argparse.Namespace) -> None:
    """--out goes with --image/--image_id, --out_dir (and --preview_dir) with --images."""
    if args.images is not None:
        if args.out_dir is None or args.out is not None:
            raise InvalidInputError("--images writes into a folder: pass --out_dir DIR (not --out)")
        if args.preview_dir is not None and is_url(args.preview_dir):
            raise InvalidInputError(f"--preview_dir {args.preview_dir}: give a folder on this machine's "
                                    "(or the workers' shared) storage; URLs are for --out_dir")
        if args.out_dir.startswith("memory://"):
            raise InvalidInputError(f"--out_dir {args.out_dir}: memory:// lives inside this process, so the outputs "
                                    "would vanish when the command ends; give a folder or a URL (gs://, s3://, ...)")
        for flag, folder in (("--out_dir", args.out_dir), ("--preview_dir", args.preview_dir)):
            if folder is not None and not is_url(folder):
                fileio.check_output_folder(folder, flag)
    elif args.out is None or args.out_dir is not None or args.preview_dir is not None:
        folders = [flag for flag in ("--out_dir", "--preview_dir") if getattr(args, flag[2:]) is not None]
        raise InvalidInputError("--image and --image_id write one file: pass --out FILE"
                                + (f" (not {', '.join(folders)}: those are for --images)" if folders else ""))
    elif args.dask is not None:
        raise InvalidInputError("--dask runs a folder of images: pass --images DIR|GLOB and --out_dir DIR")
    unused = [f"--{flag}" for flag, default in (("downsample", 0), ("api_base", None), ("download_dir", None))
              if getattr(args, flag) != default]
    if unused and args.image_id is None:
        raise InvalidInputError(f"{', '.join(unused)} go with --image_id (an Allen section fetched first); "
                                "leave them out for --image and --images")
    if args.seed != 0 and args.mode != "sample":  # it only seeds sampling here
        raise InvalidInputError("--seed is for --mode sample (the Image Transformer's draws); add --mode sample, "
                                "or leave --seed out")
    if args.preview_size < 0:
        raise InvalidInputError(f"--preview_size must be >= 0 (0: no compare picture), got {args.preview_size}")
    if args.dask is not None:  # before the model is opened
        from allen_sr.api.cluster_folders import check_address

        check_address(args.dask)
    if args.out is not None:
        if is_url(args.out):
            raise InvalidInputError(f"--out {args.out}: --out is a file on this machine; to write to a URL, pass "
                                    f"--images {args.image or 'IMAGE'} --out_dir {posixpath.dirname(args.out)} "
                                    "(the output keeps its input's name)")
        out = Path(args.out)
        if writers.output_kind(out) != "tiff" and args.compression != "deflate":
            raise InvalidInputError(f"--compression {args.compression} applies to TIFF outputs; {out} is not one: "
                                    "name it .tif or .ome.tif, or leave --compression out")
        writers.check_writable(out)


def predicts_distribution(spec: ModelSpec) -> bool:
    """Whether the model has uncertainty maps, from what records it without opening the model: an
    Image Transformer always; a conv model with its probabilistic head (an export's config.json names
    its distribution.onnx; a run's hparams say probabilistic)."""
    model = model_name_of(spec)
    if model != CONV_MODEL:
        return True
    if spec.exported is not None:
        from allen_sr.export.runtime import read_config

        return bool(read_config(spec.exported).get("distribution"))
    from allen_sr.decoding.checkpoints import load_hparams

    return bool(getattr(load_hparams(spec.hparams_set, spec.problem, spec.hparams, spec.output_dir),
                        "probabilistic", False))


def check_only(args: argparse.Namespace, image: str | None, spec: ModelSpec, say: Callable[[str], None]) -> int:
    """--check: the input check on every input, as `upscale` would enlarge it, without the model."""
    from allen_sr.api.folders import collect_images
    from allen_sr.api.input_report import check_files, check_report_path

    unused = [flag for flag in ("out", "out_dir", "preview_dir", "dask") if getattr(args, flag) is not None]
    if unused:
        say(f"--check enlarges and writes nothing: {', '.join('--' + f for f in unused)} left unused")
    if args.uncertainty and not predicts_distribution(spec):  # what the run would refuse
        raise InvalidInputError(no_distribution(f"{model_name_of(spec)} {describe_source(spec)}"))
    if args.uncertainty and spec.exported is not None:  # its distribution.onnx missing or damaged: so would it
        from allen_sr.export.runtime import check_distribution

        check_distribution(spec.exported)
    report_path = check_report_path(args.report) if args.report else None
    paths = collect_images(args.images) if args.images is not None else [image]
    report = check_files(paths, trained_degradation(spec), describe_source(spec), args.level,
                         (args.left, args.top, args.width, args.height), not args.no_progress,
                         min_side=model_shape(spec)[0])  # the model's input tile: nothing smaller is enlarged
    if args.images is None and report.failed:  # one image: what upscale would say of it
        raise InvalidInputError(next(iter(report.failed.values())))
    print("\n".join(report.lines()), flush=True)
    if report_path is not None:
        say(f"report: {report.write(report_path)}")
    return 1 if report.beyond or report.failed else 0


def note_shared_extras(out: Path, preview: bool, uncertainty: bool, say: Callable[[str], None]) -> None:
    """Say when this output's compare picture or uncertainty maps replace another output's: they are
    named from the output's name without its image type, so a_x4.png and a_x4.ome.tif share them."""
    files = ([compare_path(out)] if preview else []) + (list(uncertainty_paths(out)) if uncertainty else [])
    others, existing = shared_extras(out, files)
    if existing:
        stem = compare_path(out).name[:-len(".compare.png")]
        say(f"note: {', '.join(p.name for p in existing)} of {others[0].name} will be replaced by {out.name}'s "
            f"(the pictures of both are named {stem}.*); give --out another name to keep them")


def upscale_main(argv: list[str] | None = None) -> int:
    args = shared.parse(build_parser(), argv)

    def body() -> int:
        if args.report is not None and not args.check:
            raise InvalidInputError("--report writes the table of --check: add --check, or leave --report out")
        if not args.check:
            check_outputs(args)
        batch = args.batch_size
        args.batch_size = batch or 1
        spec = shared.model_spec(args)
        args.batch_size = batch
        options = options_of(args)
        region = Region(args.left, args.top, args.width, args.height)
        progress = not args.no_progress
        say = lambda message: print(message, flush=True)  # noqa: E731
        image = args.image
        if args.image_id is not None:
            image, size = allen_section(args.image_id, Path(args.out or f"{args.image_id}.png"), args.downsample,
                                        args.api_base, args.download_dir, progress)
            if options.pixel_size_um is None and size:
                options = Options(**{**options.__dict__, "pixel_size_um": size})
        if args.check:
            return check_only(args, image, spec, say)
        with Upscaler(spec, options) as up:
            if args.uncertainty:
                up.require_distribution()  # once, before any image is read
            file_options = dict(region=region, level=options.level, pixel_size_um=options.pixel_size_um,
                                restart=options.restart, compression=options.compression,
                                uncertainty=args.uncertainty)
            if args.images is None:
                note_shared_extras(Path(args.out), options.preview_size > 0, args.uncertainty, say)
                up.predict_file(image, args.out, progress=progress, preview_size=options.preview_size,
                                log=say, **file_options)
                return 0
            from allen_sr.api.folders import collect_images, plan_outputs, upscale_folder

            pairs = plan_outputs(collect_images(args.images), args.out_dir,
                                 args.preview_dir if options.preview_size > 0 else None, args.uncertainty)
            say(f"{count(len(pairs), 'image')} -> {args.out_dir}, {up.describe}")
            if args.dask is None:
                report = upscale_folder(up, pairs, progress, args.preview_dir,
                                        log=None if progress else say, **file_options)
            else:
                from allen_sr.api.cluster_folders import dask_client, upscale_folder_on_cluster

                with dask_client(args.dask, say) as client:
                    report = upscale_folder_on_cluster(client, spec, options, up.made_by, pairs, progress,
                                                       args.preview_dir, log=None if progress else say,
                                                       **file_options)
        print(report.summary(), flush=True)
        return 1 if report.failed else 0

    return shared.run_command("upscale", body)


if __name__ == "__main__":
    sys.exit(upscale_main())


__all__ = ["Region", "Options", "build_parser", "upscale_main", "compare_path", "CONV_TILE", "RAMP"]
