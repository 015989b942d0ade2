"""The user's guide stays true: every command and flag it shows exists, every link resolves, and
the `degradation` spec it calls the default is the one the hparams sets use.

Checked: README.md, the guides in docs/ (not docs/decisions/, which records history) and the
shipped models' cards. Flags of `allen-sr` commands are checked against the command's own
argparse parser; `train`, `datagen` and `launch` also pass tensor2tensor's flags through, which
are read from the real `--helpfull` of `allen-sr train` and `allen-sr datagen`.
"""
from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from allen_sr.cli import SUBCOMMANDS
from allen_sr.data.degrade import REAL_INPUTS

REPO = Path(__file__).resolve().parents[1]
GUIDES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
          *sorted((REPO / "allen_sr" / "pretrained").glob("*/MODEL_CARD.md"))]
T2T_TOOLS = ("train", "datagen")  # every t2t-trainer / t2t-datagen flag passes through
PASS_THROUGH = {"train": ("train",), "datagen": ("datagen",), "launch": ("train",)}
FLAG = re.compile(r"--([A-Za-z][A-Za-z0-9_]*)")


def shell_commands(text: str) -> list[str]:
    """The `allen-sr ...` lines of the bash blocks in ``text``, continuation lines joined and
    comments dropped."""
    found = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            line = re.split(r"\s#\s", line)[0].strip()
            if line.startswith("allen-sr "):
                found.append(line)
    return found


def inline_flags(text: str) -> set[str]:
    """Flags named in inline code spans (`--flag ...`) outside the code blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return {name for span in re.findall(r"`([^`]+)`", prose) for name in FLAG.findall(span)
            if span.lstrip().startswith(("--", "allen-sr "))}


@lru_cache(maxsize=None)
def parser_flags(command: str) -> frozenset[str]:
    """The long options of ``allen-sr COMMAND``'s own argparse parser."""
    module = importlib.import_module(SUBCOMMANDS[command][0])
    options = [o for action in module.build_parser()._actions for o in action.option_strings]
    return frozenset(o[2:] for o in options if o.startswith("--"))


@lru_cache(maxsize=None)
def t2t_flags(command: str) -> frozenset[str]:
    """The flags ``allen-sr COMMAND --helpfull`` lists (absl: `--name:` or `--[no]name:`)."""
    proc = subprocess.run([sys.executable, "-m", "allen_sr.cli", command, "--helpfull"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    names = re.findall(r"^\s+--(?:\[no\])?([A-Za-z0-9_]+):", proc.stdout + proc.stderr, re.M)
    assert len(names) > 50, f"allen-sr {command} --helpfull listed {len(names)} flags:\n{proc.stderr[-2000:]}"
    return frozenset(names)


def known_flags(command: str) -> frozenset[str]:
    own = frozenset() if command in T2T_TOOLS else parser_flags(command)
    for tool in PASS_THROUGH.get(command, ()):
        own |= t2t_flags(tool)
    return own


@lru_cache(maxsize=None)
def every_flag() -> frozenset[str]:
    """The flags of all `allen-sr` commands together."""
    return frozenset().union(*(known_flags(c) for c in SUBCOMMANDS if c != "usr_dir"))


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_guide_commands_use_existing_commands_and_flags(guide):
    wrong = []
    for line in shell_commands(guide.read_text()):
        words = shlex.split(line)
        command = words[1].replace("-", "_")
        if command not in SUBCOMMANDS:
            wrong.append(f"unknown command in: {line}")
            continue
        flags = {FLAG.match(w).group(1) for w in words[2:] if FLAG.match(w)}
        missing = sorted(flags - known_flags(command))
        if missing:
            wrong.append(f"{', '.join('--' + f for f in missing)} not a flag of allen-sr {words[1]}: {line}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_guide_flags_in_the_text_exist(guide):
    missing = sorted(inline_flags(guide.read_text()) - every_flag())
    assert not missing, f"{guide.name} names flags no allen-sr command has: {missing}"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_guide_links_resolve(guide):
    targets = re.findall(r"\]\(([^)\s]+)\)", guide.read_text())
    broken = []
    for target in targets:
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path = target.split("#")[0]
        if path and not (guide.parent / path).exists():
            broken.append(target)
    assert not broken, f"{guide.name} links to missing files: {broken}"


def test_readme_shows_the_default_degradation_spec():
    text = (REPO / "README.md").read_text()
    assert f"degradation={REAL_INPUTS}" in text, "README.md: the sets' default spec changed"


def test_the_checks_catch_a_wrong_flag_and_a_broken_link(tmp_path):
    """The helpers above find what they are for (a guide with one mistake of each kind)."""
    guide = tmp_path / "guide.md"
    guide.write_text("```bash\nallen-sr upscale --image a.png \\\n  --out b.png --no_such_flag 3  # x\n```\n"
                     "Use `--tile 512` or `allen-sr evaluate --degrade jpeg=75`. [x](missing.md)\n")
    (line,) = shell_commands(guide.read_text())
    assert line == "allen-sr upscale --image a.png --out b.png --no_such_flag 3"
    assert {"tile", "degrade"} <= inline_flags(guide.read_text())
    assert "no_such_flag" not in parser_flags("upscale") and "tile" in parser_flags("upscale")
    with pytest.raises(AssertionError, match="missing.md"):
        test_guide_links_resolve(guide)
