"""The layout rules of docs/ARCHITECTURE.md, checked on the source: imports point down the layers,
no private name crosses a module boundary, no module grows past the size limit, and importing a
library module has no side effects on the process."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

ROOT = Path(REPO)
# Package -> layer. A module may import its own layer and the layers below it.
LAYERS = {
    "allen_sr.fileio": 0, "allen_sr.sample_data": 0, "allen_sr.errors": 0, "allen_sr.pretrained": 0,
    "allen_sr.data": 1, "allen_sr.evaluation": 1, "allen_sr.inference": 1,
    "allen_sr.t2t": 2,
    "allen_sr.models": 3,
    "allen_sr.problems": 4, "allen_sr.hparams": 4,
    "allen_sr.decoding": 5,
    "allen_sr.export": 6,  # export writers (TF) and the TF-free runtime
    "allen_sr.api": 7,  # the Python API (Upscaler); the commands are thin wrappers over it
    "allen_sr.commands": 8, "allen_sr.cli": 8, "allen_sr.testing": 8,
}
# The one composition root: register_all() imports the registering packages (lazily).
# The package root names the public API (`from allen_sr import Upscaler`), imported on first use.
UPWARD_ALLOWED = {("allen_sr.t2t.names", "allen_sr.problems"), ("allen_sr.t2t.names", "allen_sr.hparams"),
                  ("allen_sr", "allen_sr.api")}
MAX_LINES = 520
MAX_LINE_CHARS = 120
SOURCE_FOLDERS = ["allen_sr", "tests", "benchmarks", "scripts", "problems", "hparams"]
FOLDERS = {"allen_sr": "allen_sr", "problems": "allen_sr.problems", "hparams": "allen_sr.hparams"}


def modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package] + parts), path


def layer(name):
    if name == "allen_sr":  # the package root: its version only
        return 0
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)
    return None if best is None else LAYERS[best]


def imports(path, name):
    """(imported module, imported names) for every allen_sr import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("allen_sr"):
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against this package
                base = name.split(".")[:len(name.split(".")) - node.level + (1 if path.name == "__init__.py" else 0)]
                module = ".".join(base + ([module] if module else []))
            if module.startswith("allen_sr"):
                yield module, [a.name for a in node.names]


def test_every_module_has_a_layer():
    assert [n for n, _ in modules() if layer(n) is None] == []


def test_imports_point_down_the_layers():
    wrong = []
    for name, path in modules():
        for target, _ in imports(path, name):
            if layer(target) is not None and layer(target) > layer(name):
                if not any(name == a and (target == b or target.startswith(b + ".")) for a, b in UPWARD_ALLOWED):
                    wrong.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    assert wrong == []


def test_no_import_cycles():
    """Module-level and function-level imports alike: a cycle (two modules each needing the other)
    works only by the order they happen to be imported in."""
    names = {n for n, _ in modules()}
    graph = {}
    for name, path in modules():
        graph[name] = set()
        for target, imported in imports(path, name):
            found = {f"{target}.{n}" for n in imported if f"{target}.{n}" in names} or {target}
            graph[name] |= {t for t in found if t in names and t != name}
    cycles, seen = [], set()

    def walk(node, trail):
        for nxt in sorted(graph[node]):
            if nxt in trail:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in seen:
                seen.add(nxt)
                walk(nxt, trail + [nxt])

    for start in sorted(graph):
        if start not in seen:
            seen.add(start)
            walk(start, [start])
    assert cycles == []


def test_no_private_name_is_imported_across_modules():
    wrong = []
    for name, path in modules():
        for target, names in imports(path, name):
            wrong += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert wrong == []


def test_no_module_is_too_long():
    long = {name: n for name, path in modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_source_line_is_too_long():
    """Every Python file, tests and scripts too; the folders are walked (not git ls-files) so that a
    clone without .git checks them as well."""
    paths = [p for folder in SOURCE_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))] + [ROOT / "setup.py"]
    long = [f"{path.relative_to(ROOT)}:{i}: {len(line)} chars" for path in paths
            for i, line in enumerate(path.read_text().splitlines(), 1) if len(line) > MAX_LINE_CHARS]
    assert not long, f"lines over {MAX_LINE_CHARS} characters:\n" + "\n".join(long)


def test_the_test_files_run_first_exist():
    """conftest.LONGEST_FIRST orders `make test`'s files: a renamed file would silently run last."""
    from conftest import LONGEST_FIRST

    assert [name for name in LONGEST_FIRST if not (ROOT / "tests" / name).is_file()] == []


@pytest.mark.parametrize("module", ["allen_sr", "allen_sr.data.tiles", "allen_sr.data.download",
                                    "allen_sr.evaluation.pictures", "allen_sr.commands.decode",
                                    "allen_sr.inference.tiling", "allen_sr.inference.writers",
                                    "allen_sr.commands.upscale", "allen_sr.commands.export",
                                    "allen_sr.api", "allen_sr.pretrained",
                                    "allen_sr.export.runtime"])
def test_importing_a_library_module_changes_no_process_state(module):
    """No environment variable set, no Pillow limit changed, no TensorFlow loaded by an import."""
    code = ("import os, sys, PIL.Image as I; before = (dict(os.environ), I.MAX_IMAGE_PIXELS)\n"
            f"import {module}\n"
            "print(dict(os.environ) == before[0], I.MAX_IMAGE_PIXELS == before[1], 'tensorflow' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env, cwd="/").stdout.split()
    assert out == ["True", "True", "False"]
