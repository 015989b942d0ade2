"""The flags every command that runs a trained model shares (`decode`, `evaluate`, `upscale`),
with one set of defaults, one validation and one exit code for a user's mistake.

Only this layer parses flags: :func:`model_spec` turns them into a typed
`allen_sr.api.models.ModelSpec` and `allen_sr.api.models.open_model` builds the decoder from it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from allen_sr.api.models import (ModelSpec, OpenModel, decode_kwargs, model_shape, open_model,
                                 pretrained_spec, resolve)
from allen_sr.decoding.modes import MODES, check_mode, check_sampling_options, check_seed
from allen_sr.decoding.registry import KINDS
from allen_sr import pretrained
from allen_sr.errors import InvalidInputError, UserError, machine_trouble

# ModelSpec, OpenModel, model_shape, open_model and decode_kwargs live in allen_sr.api.models;
# the commands reach them through this module.
__all__ = ["USAGE_ERROR", "ModelSpec", "OpenModel", "add_model_args", "model_spec", "model_shape",
           "open_model", "decode_kwargs", "run_command", "parse", "expand_home"]

USAGE_ERROR = 2  # exit code of every command for a user's mistake (as argparse uses)
INTERRUPTED = 130  # exit code after Ctrl-C (128 + SIGINT, as a shell reports it)


def add_model_args(p: argparse.ArgumentParser, shipped: bool = True, batch_help: str | None = None) -> None:
    """Add the shared model and decoding flags to a command's parser; ``shipped=False`` for a
    command that runs training runs only (`decode`): --pretrained and --exported are not offered.
    ``batch_help``: --batch_size's help where the command sets its own default."""
    g = p.add_argument_group("model and decoding (default: the default pretrained model, "
                             "`allen-sr models` lists them)" if shipped else
                             "model and decoding (a training run: --problem, --hparams_set, --output_dir)")
    g.add_argument("--pretrained", default=None, metavar="NAME",
                   help="a pretrained model shipped with allen-sr (`allen-sr models`); runs without TensorFlow"
                   if shipped else argparse.SUPPRESS)
    g.add_argument("--exported", default=None, metavar="DIR",
                   help="a folder written by `allen-sr export`: runs without TensorFlow; "
                        "replaces --problem, --hparams_set, --output_dir" if shipped else argparse.SUPPRESS)
    g.add_argument("--problem", default=None, help="registered problem the model was trained on")
    g.add_argument("--model", default=None,
                   help="t2t model (default: the one whose variables the checkpoint holds)")
    g.add_argument("--hparams_set", default=None, help="hparams set the model was trained with")
    g.add_argument("--hparams", default="", help='hparams overrides "k=v,..." as given to t2t-trainer')
    g.add_argument("--output_dir", default=None,
                   help="t2t-trainer output dir (its newest checkpoint is used) or a checkpoint prefix")
    g.add_argument("--mode", default=None, choices=MODES,
                   help="decoding mode (default: the model's decode_mode, from its hparams set or export "
                        "config, else greedy). Image Transformer: greedy, sample (--temperature) or mean "
                        "feed each value back as the next ones' context; mean_bicubic gives each "
                        "sub-pixel's expected value given bicubic values before it, the context "
                        "allen-sr's sets train with. Conv models: greedy (mean is the same)")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature for --mode sample")
    g.add_argument("--seed", type=int, default=0,
                   help="seed for --mode sample; evaluate: also which tiles and degradations (default %(default)s)")
    g.add_argument("--batch_size", type=int, default=16,
                   help=batch_help or "tiles decoded together (default %(default)s)")
    g.add_argument("--decoder", default=None, choices=KINDS,
                   help="fast: incremental NumPy; naive: the t2t graph, one pass per sub-pixel "
                        "(reference); one_pass: the conv model (default: the model's own)")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The :class:`ModelSpec` the shared flags describe; ValueError for values out of range."""
    if args.batch_size < 1:
        raise InvalidInputError(f"--batch_size must be >= 1, got {args.batch_size}")
    check_seed(args.seed)
    if args.mode is not None:
        check_mode(args.mode, args.temperature)
        check_sampling_options(args.mode, args.temperature)
    given = [f"--{k}" for k in ("problem", "hparams_set", "output_dir", "model", "hparams", "decoder")
             if getattr(args, k)]
    decoding = dict(mode=args.mode, temperature=args.temperature, seed=args.seed,
                    batch_size=args.batch_size)
    whole = [f"--{k} {v}" for k in ("pretrained", "exported") if (v := getattr(args, k)) is not None]
    if len(whole) > 1 or (whole and given):
        raise UserError(f"{whole[0]} is the whole model: leave out {', '.join(whole[1:] + given)}")
    if args.pretrained is not None:
        return pretrained_spec(args.pretrained, **decoding)
    if args.exported is None and not given:
        return resolve(None, **decoding)  # the default pretrained model
    missing = [f"--{k}" for k in ("problem", "hparams_set", "output_dir") if not getattr(args, k)]
    if args.exported is None and missing and args.output_dir:  # the run's flags.txt names the rest
        named = {k: getattr(args, k) for k in ("problem", "hparams_set", "model", "hparams", "decoder")
                 if getattr(args, k)}
        return resolve(args.output_dir, **decoding, **named)
    if args.exported is None and missing and args.model in {m.name for m in pretrained.available()}:
        raise UserError(f"--model {args.model} names a t2t model class; for the shipped model pass "
                        f"--pretrained {args.model}")
    if args.exported is None and missing:
        raise UserError(f"{', '.join(missing)} required: name the trained model (--problem, "
                        "--hparams_set, --output_dir), pass --exported DIR or --pretrained NAME, "
                        "or leave all out for the default pretrained model")
    return ModelSpec(problem=args.problem or "", hparams_set=args.hparams_set or "",
                     output_dir=args.output_dir or "", model=args.model, hparams=args.hparams,
                     mode=args.mode, temperature=args.temperature, seed=args.seed,
                     batch_size=args.batch_size, decoder=args.decoder, exported=args.exported)


DEBUG_ENV = "ALLEN_SR_DEBUG"  # set by `allen-sr --debug`: a user's mistake keeps its traceback too


def run_command(name: str, body: Callable[[], int | None]) -> int:
    """Run a command's ``body``; a user's mistake (`allen_sr.errors.UserError`, or a file the
    system cannot find or open) becomes one line on stderr and exit code 2. Anything else is a
    bug and propagates with its traceback."""
    import os

    try:
        return int(body() or 0)
    except (UserError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"allen-sr {name}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"allen-sr {name}: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED
    except OSError as exc:  # a full disk or a folder that cannot be written: the machine's, said in one line
        trouble = machine_trouble(exc)
        if trouble is None or os.environ.get(DEBUG_ENV):
            raise
        print(f"allen-sr {name}: error: {trouble}", file=sys.stderr)
        return 1


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (default: the process's arguments); see :func:`expand_home`. Files left over
    after an option that takes one pattern (--images) are a pattern the shell expanded: said so."""
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if extra:
        pattern = next((f"--{k}" for k in ("images",) if isinstance(getattr(args, k, None), str)), None)
        if pattern and all(not a.startswith("-") and os.path.exists(a) for a in extra):
            parser.error(f"{pattern} takes one folder or pattern, but the shell expanded the pattern into "
                         f"{len(extra) + 1} files: quote it ({pattern} 'slides/*.tif') or pass the folder")
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return expand_home(args)


def expand_home(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every value that starts with ``~/`` (quoted, so the shell left it) expanded as the
    shell would: some options expanded it and others made a folder named ``~`` in the working folder."""
    def expand(value: object) -> object:
        if isinstance(value, list):
            return [expand(v) for v in value]
        home = isinstance(value, str) and (value == "~" or value.startswith("~/"))
        return os.path.expanduser(value) if home else value

    for name, value in vars(args).items():
        setattr(args, name, expand(value))
    return args
