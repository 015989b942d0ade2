"""``allen-sr download``: the command line of the Allen image downloader.

Parses and checks the flags, selects image ids (by id, id file, data set or filter; default the
100 stock ids), then runs :func:`allen_sr.data.download.download_images` and prints its summary.
Also runs as ``python -m allen_sr.commands.download``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import re
import sys
from pathlib import Path
from typing import Iterator

from allen_sr import fileio
from allen_sr.commands.args import expand_home
from allen_sr.data.allen_api import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, AllenClient
from allen_sr.data.allen_urls import DEFAULT_API_BASE, Region, check_api_base
from allen_sr.data.download import DEFAULT_WORKERS, default_image_ids, download_images, unique_ids
from allen_sr.data.errors import AllenApiError, DirectoryBusyError
from allen_sr.data.retry import DEFAULT_BACKOFF, DEFAULT_RATE, DEFAULT_RETRIES, RetryPolicy
from allen_sr.errors import InvalidInputError

__all__ = ["build_parser", "download_main"]


def _parse_id_list(text: str, what: str) -> list[int]:
    ids = []
    for token in re.split(r"[,\s]+", text.strip()):
        if not token:
            continue
        if not re.fullmatch(r"[0-9]+", token):
            raise InvalidInputError(f"{what}: {token!r} is not a numeric id")
        ids.append(int(token))
    return ids


def _read_id_file(path: str) -> list[int]:
    ids: list[int] = []
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # -sig: Notepad's and Excel's mark
    except OSError as error:
        raise InvalidInputError(f"--image_ids_file: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"--image_ids_file {path}: not a text file; give one id per line (UTF-8)") from None
    for number, line in enumerate(lines, start=1):
        ids += _parse_id_list(line.split("#", 1)[0], f"{path} line {number}")
    return ids


def build_parser() -> argparse.ArgumentParser:
    """The ``allen-sr download`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="allen-sr download",
        description="Download Allen Brain Atlas section images as <id>.jpg into --tmp_dir, "
                    "resumably (a manifest.json records what is finished and verified).",
        epilog="Without an image selection the 100 section images of the stock tensor2tensor "
               "Allen problem are downloaded. Images (c) Allen Institute; cite the image URLs "
               "recorded in manifest.json.",
    )
    parser.add_argument("--tmp_dir", required=True,
                        help="folder for <id>.jpg files and manifest.json")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image_ids", help="comma-separated SectionImage ids, e.g. 1,2,3")
    source.add_argument("--image_ids_file",
                        help="file of SectionImage ids (comma/whitespace separated, '#' comments)")
    source.add_argument("--data_set_ids", help="comma-separated SectionDataSet ids: download all "
                                               "their section images")
    filters = parser.add_argument_group("listing by filters (instead of ids)")
    filters.add_argument("--product", help="SectionDataSet product abbreviation, e.g. Mouse "
                                           "(default Mouse when --plane is given)")
    filters.add_argument("--plane", help="plane of section name, e.g. coronal or sagittal")
    filters.add_argument("--max_data_sets", type=int,
                         help="use at most this many matching data sets (there are thousands)")
    parser.add_argument("--max_images", type=int, help="download at most this many images")
    parser.add_argument("--list_only", action="store_true",
                        help="print the selected image ids, one per line, and exit")
    image = parser.add_argument_group("what to fetch per image")
    image.add_argument("--downsample", type=int,
                       help="halve width and height this many times (default: full resolution)")
    image.add_argument("--quality", type=int, help="JPEG quality 0-100 asked of the server")
    for name, meaning in (("left", "full-resolution x of the region"),
                          ("top", "full-resolution y of the region"),
                          ("width", "region width at the downsampled level"),
                          ("height", "region height at the downsampled level")):
        image.add_argument(f"--{name}", type=int, help=f"{meaning} (region download)")
    net = parser.add_argument_group("network")
    net.add_argument("--api_base", default=DEFAULT_API_BASE,
                     help=f"API root (default {DEFAULT_API_BASE}; certificates are verified)")
    net.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                     help=f"parallel downloads (default {DEFAULT_WORKERS})")
    net.add_argument("--rate", type=float, default=DEFAULT_RATE,
                     help=f"at most this many requests per second over all workers "
                          f"(default {DEFAULT_RATE:g}; 0 = no limit)")
    net.add_argument("--timeout", type=float, default=DEFAULT_READ_TIMEOUT,
                     help=f"read timeout in seconds: longest silence from the server "
                          f"(default {DEFAULT_READ_TIMEOUT:g})")
    net.add_argument("--connect_timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT,
                     help=f"connect timeout in seconds (default {DEFAULT_CONNECT_TIMEOUT:g})")
    net.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                     help=f"retries per image after the first attempt (default {DEFAULT_RETRIES})")
    net.add_argument("--backoff", type=float, default=DEFAULT_BACKOFF,
                     help=f"first retry delay in seconds, doubling each time, with jitter "
                          f"(default {DEFAULT_BACKOFF:g})")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="only warnings and the summary (no retry notices)")
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Region | None:
    empty = [f"--{name}" for name in ("image_ids", "image_ids_file", "data_set_ids", "product", "plane")
             if getattr(args, name) is not None and not getattr(args, name).strip()]
    if empty:  # an empty selection meant "the 100 stock images" (or ',' meant none at all)
        parser.error(f"{', '.join(empty)} is empty; leave it out for the 100 stock images")
    by_id = args.image_ids or args.image_ids_file or args.data_set_ids
    if (args.product or args.plane) and by_id:
        parser.error("--product/--plane select images by filter; do not combine them with "
                     "--image_ids, --image_ids_file or --data_set_ids")
    if args.max_data_sets is not None and not (args.product or args.plane):
        parser.error("--max_data_sets only applies to --product/--plane listing")
    minimums = {"workers": 1, "max_images": 1, "max_data_sets": 1, "retries": 0, "downsample": 0}
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            parser.error(f"--{name} must be >= {minimum}, got {value}")
    if args.quality is not None and not 0 <= args.quality <= 100:
        parser.error(f"--quality must be within 0-100, got {args.quality}")
    for name in ("timeout", "connect_timeout"):
        if not 0 < getattr(args, name) < math.inf:  # nan too
            parser.error(f"--{name} must be a number of seconds > 0, got {getattr(args, name)}")
    if not (0 <= args.rate < math.inf and 0 <= args.backoff < math.inf):
        parser.error(f"--rate and --backoff must be numbers >= 0, got {args.rate} and {args.backoff}")
    try:
        check_api_base(args.api_base)
    except InvalidInputError as error:
        parser.error(str(error))
    corners = [args.left, args.top, args.width, args.height]
    if any(value is not None for value in corners):
        if args.width is None or args.height is None:
            parser.error("a region needs at least --width and --height (--left/--top default 0)")
        try:
            return Region(args.left or 0, args.top or 0, args.width, args.height)
        except ValueError as error:
            parser.error(str(error))
    return None


def _select_ids(args: argparse.Namespace, client: AllenClient) -> list[int]:
    if args.image_ids:
        ids = _parse_id_list(args.image_ids, "--image_ids")
    elif args.image_ids_file:
        ids = _read_id_file(args.image_ids_file)
    elif args.data_set_ids:
        data_sets = _parse_id_list(args.data_set_ids, "--data_set_ids")
        ids = [int(row["id"]) for row in client.list_section_images(data_sets)]
        if not ids:
            raise AllenApiError(f"no section images found for data sets {args.data_set_ids} on "
                                f"{client.api_base}")
    elif args.product or args.plane:
        ids = client.list_image_ids_by_filter(product=args.product or "Mouse", plane=args.plane,
                                              max_data_sets=args.max_data_sets,
                                              max_images=args.max_images)
        if not ids:
            raise AllenApiError(f"no section images match product={args.product or 'Mouse'!r} "
                                f"plane={args.plane!r} on {client.api_base}")
    else:
        ids = default_image_ids()
    if not ids:
        raise InvalidInputError("the selection holds no image ids (only separators, blank lines or comments); "
                                "give at least one id")
    ids = unique_ids(ids)
    return ids if args.max_images is None else ids[: args.max_images]


def download_main(argv: list[str] | None = None) -> int:
    """``allen-sr download``: returns 0 when every image is present, 1 otherwise, 2 on bad usage."""
    parser = build_parser()
    try:
        args = expand_home(parser.parse_args(argv))
        region = _validate(parser, args)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    _configure_logging(args.quiet)
    timeout = (args.connect_timeout, args.timeout)
    rate = args.rate or None
    policy = RetryPolicy(attempts=args.retries + 1, backoff=args.backoff)
    try:
        if not args.list_only:
            fileio.check_output_folder(args.tmp_dir, "--tmp_dir")
        with AllenClient(args.api_base, timeout=timeout, retry=policy, rate=rate) as client:
            ids = _select_ids(args, client)
    except ValueError as error:
        print(f"allen-sr download: error: {error}", file=sys.stderr)
        return 2
    except AllenApiError as error:
        print(f"allen-sr download: error: listing images failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("allen-sr download: interrupted while listing the images; nothing was downloaded", file=sys.stderr)
        return 130
    if args.list_only:
        print("\n".join(str(image_id) for image_id in ids))
        return 0
    # A bar drawn into a log file is just noise; draw it only for a person at a terminal.
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        with _tqdm_logging(progress):
            report = download_images(
                ids, args.tmp_dir, api_base=args.api_base, downsample=args.downsample,
                quality=args.quality, region=region, workers=args.workers, rate=rate,
                timeout=timeout, retries=args.retries, backoff=args.backoff, progress=progress)
    except DirectoryBusyError as error:
        print(f"allen-sr download: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("allen-sr download: interrupted; run the same command again to resume (finished "
              "images are kept)", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"allen-sr download: error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.ok else 1


def _configure_logging(quiet: bool) -> None:
    logger = logging.getLogger("allen_sr")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    # Leave logging alone if the application (e.g. the allen-sr CLI) already set it up.
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


@contextlib.contextmanager
def _tqdm_logging(enabled: bool) -> Iterator[None]:
    # Log lines written while a bar is drawn would tear it; route them through tqdm.write.
    if not enabled:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger("allen_sr"), logging.getLogger()]):
        yield


if __name__ == "__main__":
    sys.exit(download_main())
