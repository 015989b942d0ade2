"""How `allen-sr` reports errors: a user's mistake is one line and exit code 2, a bug keeps its
traceback, `allen-sr --debug` shows the traceback of a mistake too. Real commands, real processes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from allen_sr.commands.args import USAGE_ERROR, run_command
from allen_sr.errors import InvalidInputError, MissingInputError, UserError
from conftest import REPO


def test_a_user_error_is_one_line_and_a_bug_propagates(capsys):
    def mistake() -> None:
        raise InvalidInputError("tile size must be at least 8 px, got 2")

    assert run_command("upscale", mistake) == USAGE_ERROR
    assert capsys.readouterr().err == "allen-sr upscale: error: tile size must be at least 8 px, got 2\n"

    def bug() -> None:
        raise ValueError("operands could not be broadcast together")  # not a UserError: a bug

    with pytest.raises(ValueError, match="broadcast"):
        run_command("upscale", bug)
    # the kinds are also the built-in exceptions callers catch
    assert issubclass(InvalidInputError, ValueError) and issubclass(MissingInputError, FileNotFoundError)
    assert issubclass(MissingInputError, UserError)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ALLEN_SR_DEBUG"}
    return subprocess.run([sys.executable, "-m", "allen_sr.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_the_command_line_and_debug(tmp_path):
    argv = ["upscale", "--pretrained", "conv-fast", "--image", str(tmp_path / "none.png"),
            "--out", str(tmp_path / "o.png")]
    plain = cli(*argv)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()] and "none.png" in plain.stderr
    debug = cli("--debug", *argv)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "none.png" in debug.stderr
