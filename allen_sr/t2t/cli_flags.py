"""Command lines of `allen-sr datagen` / `allen-sr train` as lists of flags: asking for help, flag
files, ~ in folder flags and a relative --data_dir read as t2t's tools will read them, so that our
checks see the same flags and folders. No TensorFlow here (absl parses the flag files)."""
from __future__ import annotations

import os
import re

from allen_sr.errors import InvalidInputError, first_line
from allen_sr.t2t.cluster import flag_value
from allen_sr.t2t.tuning import without_flag

__all__ = ["HELP_FLAGS", "HOME_FLAGS", "UsageError", "absolute_data_dir", "asks_help", "expand_home", "has_flag",
           "module_flag_names", "read_flagfiles"]


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
