"""Command lines of `allen-sr datagen` / `allen-sr train` as lists of flags: asking for help, flag
files, ~ in folder flags and a relative --data_dir read as t2t's tools will read them, so that our
checks see the same flags and folders, and flag names t2t's tools do not define. TensorFlow is imported only
to ask t2t-trainer which flags it defines (:func:`check_flag_names`); absl parses the flag files."""
from __future__ import annotations

import os
import re

from allen_sr.errors import InvalidInputError, first_line
from allen_sr.t2t.cluster import flag_value
from allen_sr.t2t.tuning import without_flag

__all__ = ["HELP_FLAGS", "HOME_FLAGS", "UsageError", "absolute_data_dir", "asks_help", "expand_home", "has_flag",
           "module_flag_names", "read_flagfiles", "ABSL_FLAGS",
           "TRAIN_FLAGS_OF_OURS", "check_flag_names"]


class UsageError(InvalidInputError):
    """A user's mistake in the flags of `allen-sr datagen/train` (the message says what to do)."""


HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")


def asks_help(argv: list[str]) -> bool:
    """Whether ``argv`` asks for help (absl's flags, which print it and exit before any check)."""
    return any(a in HELP_FLAGS for a in argv)


def has_flag(argv: list[str], name: str) -> bool:
    """Whether ``argv`` passes --NAME (as ``--NAME=V`` or ``--NAME V``)."""
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


# Folder flags that t2t-datagen / t2t-trainer pass through os.path.expanduser.
HOME_FLAGS = ("data_dir", "output_dir", "tmp_dir")


def read_flagfiles(argv: list[str]) -> list[str]:
    """``argv`` with each --flagfile replaced by the flags in its file, read by absl as t2t's
    parser would read them, so that our checks see every flag t2t will; UsageError for a flag
    file that cannot be read."""
    if not any(re.match(r"--?flagfile(=|$)", arg) for arg in argv):
        return list(argv)
    from absl import flags

    try:
        return flags.FLAGS.read_flags_from_files(list(argv), force_gnu=True)
    except (flags.Error, OSError) as exc:
        raise UsageError(f"--flagfile: {first_line(exc)}: pass a file of flags, one per line") from None


def expand_home(argv: list[str], names: tuple[str, ...] = HOME_FLAGS) -> list[str]:
    """``argv`` with a leading ~ of the folder flags expanded, as t2t's tools do themselves: a
    literal ~ (quoted, or from a manifest) must name the same folder in our checks as in t2t's."""
    out = list(argv)
    for i, arg in enumerate(out):
        for name in names:
            if arg.startswith(f"--{name}=~"):
                out[i] = f"--{name}=" + os.path.expanduser(arg.split("=", 1)[1])
            elif arg == f"--{name}" and i + 1 < len(out) and out[i + 1].startswith("~"):
                out[i + 1] = os.path.expanduser(out[i + 1])
    return out


def absolute_data_dir(argv: list[str]) -> list[str]:
    """``argv`` with a local --data_dir made absolute: t2t records it in the run's hparams.json, where
    a relative one would name another folder for a command run elsewhere (the uncertainty
    calibration reads the run's dev split from it)."""
    data_dir = flag_value(argv, "data_dir")
    if not data_dir or "://" in data_dir or os.path.isabs(data_dir):
        return argv
    return without_flag(argv, "data_dir") + [f"--data_dir={os.path.abspath(data_dir)}"]


def module_flag_names(module: str) -> set[str]:
    """The names of the absl flags ``module`` defines (``flags.DEFINE_*("name", ...)``), read from its
    source without importing it."""
    import ast
    import importlib.util

    origin = importlib.util.find_spec(module).origin
    with open(origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE") and node.args and isinstance(node.args[0], ast.Constant)}


# Flags absl reads itself, and those `allen-sr train` reads besides t2t-trainer's (taken out before t2t parses).
ABSL_FLAGS = ("flagfile", "undefok", "help", "helpshort", "helpfull", "helpxml")
TRAIN_FLAGS_OF_OURS = ABSL_FLAGS + ("init_from", "train_steps_increment")


def check_flag_names(argv: list[str], tool: str = "t2t-trainer") -> None:
    """UsageError naming the first --flag of ``argv`` that ``tool`` (t2t-trainer for `allen-sr train`,
    t2t-datagen for `allen-sr datagen`) does not define (absl would stop there, after our checks
    had said something else: "Unknown command line flag"), with the closest defined name."""
    import difflib
    import importlib

    from allen_sr.t2t.names import register_all

    register_all()
    from absl import flags

    if tool == "t2t-trainer":
        importlib.import_module("tensor2tensor.bin.t2t_trainer")  # defines its absl flags
        known = set(flags.FLAGS) | set(TRAIN_FLAGS_OF_OURS)
    else:  # read from its source: importing it defines flags the trainer's would clash with in one process
        known = set(flags.FLAGS) | set(ABSL_FLAGS) | module_flag_names("tensor2tensor.bin.t2t_datagen")
    command = "train" if tool == "t2t-trainer" else "datagen"
    for arg in argv:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if not name or name in known or (name.startswith("no") and name[2:] in flags.FLAGS
                                          and flags.FLAGS[name[2:]].boolean):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = " (your images: --tmp_dir FOLDER)" if name == "images" else (
            f" (did you mean --{close[0]}?)" if close else "")
        raise UsageError(f"--{name}: not a {tool} flag{hint}; `allen-sr {command} --helpfull` lists them")
