"""The flags every command that runs a trained model shares (`decode`, `evaluate`, `upscale`),
with one set of defaults, one validation and one exit code for a user's mistake.

Only this layer parses flags: :func:`model_spec` turns them into a typed :class:`ModelSpec` and
:func:`open_model` builds the decoder from it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from allen_sr.decoding.modes import MODES, check_mode
from allen_sr.decoding.registry import KINDS

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tensor2tensor.utils.hparam import HParams

    from allen_sr.decoding.batching import Decoder

USAGE_ERROR = 2  # exit code of every command for a user's mistake (as argparse uses)


@dataclass(frozen=True)
class ModelSpec:
    """A trained model and how to decode it."""

    problem: str
    hparams_set: str
    output_dir: str
    model: str | None = None  # None: the model whose variables the checkpoint holds
    hparams: str = ""
    mode: str | None = None  # None: the hparams set's decode_mode (greedy if it names none)
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16
    decoder: str | None = None  # None: the model's default decoder
    exported: str | None = None  # an `allen-sr export` folder instead of problem/hparams_set/output_dir


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Add the shared model and decoding flags to a command's parser."""
    g = p.add_argument_group("model and decoding")
    g.add_argument("--exported", default=None, metavar="DIR",
                   help="a folder written by `allen-sr export`: runs without TensorFlow; "
                        "replaces --problem, --hparams_set, --output_dir")
    g.add_argument("--problem", default=None, help="registered problem the model was trained on")
    g.add_argument("--model", default=None,
                   help="t2t model (default: the one whose variables the checkpoint holds)")
    g.add_argument("--hparams_set", default=None, help="hparams set the model was trained with")
    g.add_argument("--hparams", default="", help='hparams overrides "k=v,..." as given to t2t-trainer')
    g.add_argument("--output_dir", default=None,
                   help="t2t-trainer output dir (its newest checkpoint is used) or a checkpoint prefix")
    g.add_argument("--mode", default=None, choices=MODES,
                   help="decoding mode (default: the hparams set's decode_mode, else greedy)")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature for --mode sample")
    g.add_argument("--seed", type=int, default=0, help="seed for --mode sample (default %(default)s)")
    g.add_argument("--batch_size", type=int, default=16, help="tiles decoded together (default %(default)s)")
    g.add_argument("--decoder", default=None, choices=KINDS,
                   help="fast: incremental NumPy; naive: the t2t graph, one pass per sub-pixel "
                        "(reference); one_pass: the conv model (default: the model's own)")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The :class:`ModelSpec` the shared flags describe; ValueError for values out of range."""
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.mode is not None:
        check_mode(args.mode, args.temperature)
    given = [f"--{k}" for k in ("problem", "hparams_set", "output_dir", "model", "hparams", "decoder")
             if getattr(args, k)]
    if args.exported is not None and given:
        raise ValueError(f"--exported {args.exported} is the whole model: leave out {', '.join(given)}")
    missing = [f"--{k}" for k in ("problem", "hparams_set", "output_dir") if not getattr(args, k)]
    if args.exported is None and missing:
        raise ValueError(f"{', '.join(missing)} required: name the trained model "
                         "(--problem, --hparams_set, --output_dir) or pass --exported DIR")
    return ModelSpec(problem=args.problem or "", hparams_set=args.hparams_set or "",
                     output_dir=args.output_dir or "", model=args.model, hparams=args.hparams,
                     mode=args.mode, temperature=args.temperature, seed=args.seed,
                     batch_size=args.batch_size, decoder=args.decoder, exported=args.exported)


@dataclass
class OpenModel:
    """A decoder ready to run, with what it was built from."""

    decoder: "Decoder"
    hparams: "HParams | None"  # None for an exported model
    model: str
    mode: str
    checkpoint: str


def model_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """(input size, target size, channels) of the model's problem (an export's config says it)."""
    if spec.exported is not None:
        from allen_sr.export.runtime import read_config

        config = read_config(spec.exported)
        return int(config["input_size"]), int(config["target_size"]), int(config["channels"])
    from allen_sr.t2t.names import problem_shape

    return problem_shape(spec.problem)


def open_model(spec: ModelSpec, target_shape: tuple[int, int] | None = None) -> OpenModel:
    """Restore the newest checkpoint of ``spec.output_dir`` into the decoder ``spec`` names.

    With ``spec.exported``: open that export folder instead (NumPy/onnxruntime, no TensorFlow).
    """
    if spec.exported is not None:
        from allen_sr.export.runtime import open_exported

        exported = open_exported(spec.exported)
        mode = spec.mode or exported.mode
        check_mode(mode, spec.temperature)
        return OpenModel(exported.decoder, None, exported.model, mode, str(exported.folder))
    from allen_sr.decoding import checkpoints, registry
    from allen_sr.t2t.names import check_names

    if spec.model is not None:
        registry.decoder_kinds(spec.model)  # an unsupported model fails before anything is read
    check_names(problem=spec.problem, hparams_set=spec.hparams_set)
    checkpoint = checkpoints.find_checkpoint(spec.output_dir)
    model = spec.model or checkpoints.checkpoint_model(checkpoint)
    registry.decoder_kinds(model)
    hparams = checkpoints.load_hparams(spec.hparams_set, spec.problem, spec.hparams, spec.output_dir)
    mode = spec.mode or getattr(hparams, "decode_mode", "") or "greedy"
    check_mode(mode, spec.temperature)
    size = int(hparams.img_len)
    decoder = registry.make_decoder(model, spec.decoder, hparams, checkpoint,
                                    target_shape=target_shape or (size, size))
    return OpenModel(decoder, hparams, model, mode, checkpoint)


def run_command(name: str, body: Callable[[], int | None]) -> int:
    """Run a command's ``body``; a user's mistake becomes one line on stderr and exit code 2."""
    from allen_sr.data.images import ImageSkipped
    from allen_sr.decoding.support import UnsupportedHParamsError

    try:
        return int(body() or 0)
    except (UnsupportedHParamsError, NotImplementedError, FileNotFoundError, NotADirectoryError,
            PermissionError, ValueError, KeyError, ImageSkipped) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"allen-sr {name}: error: {message}", file=sys.stderr)
        return USAGE_ERROR


def decode_kwargs(spec: ModelSpec, mode: str, progress: bool = True) -> dict[str, Any]:
    """The keyword arguments of ``Decoder.decode`` that ``spec`` fixes."""
    return dict(mode=mode, temperature=spec.temperature, seed=spec.seed,
                batch_size=spec.batch_size, progress=progress)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (default: the process's arguments)."""
    return parser.parse_args(list(sys.argv[1:] if argv is None else argv))
