"""Run benchmarks/bench_*.py and write their sections of benchmarks/RESULTS.md (`make bench`).

Each benchmark prints a markdown section. RESULTS.md holds one section per benchmark, each headed
by the date and machine of the run that wrote it: running some benchmarks rewrites their own
sections and keeps the others, so the file is always what the scripts wrote.

    python benchmarks/run_all.py                 # every benchmark
    python benchmarks/run_all.py decode datagen  # bench_decode.py and bench_datagen.py only
    python benchmarks/run_all.py quality -- --only transformer --keep_rows  # arguments for one script
"""
from __future__ import annotations

import datetime
import glob
import os
import platform
import re
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = ("# Benchmark results\n\n"
          "Written by `benchmarks/run_all.py` (`make bench`): one section per benchmark, each the "
          "output of its last run, dated. Ratios are measured side by side in one run.\n")
SECTION = re.compile(r"^## (bench_\w+\.py)$", re.M)
ARGUMENTS = re.compile(r" Arguments: `([^`]*)`\.")
FAILED = re.compile(r"_ FAILED \(exit -?\d+\)")
FAILURE_NOTE = re.compile(r"^Latest run failed: ")


def machine_facts() -> str:
    try:
        import psutil
        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        mem = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores "
            f"({cpu}), {mem} RAM, no GPU; Python {platform.python_version()}.")


def read_sections(text: str) -> dict[str, str]:
    """{script name: its section body} of an existing RESULTS.md."""
    parts = SECTION.split(text)
    return {name: body.strip() + "\n" for name, body in zip(parts[1::2], parts[2::2])}


def render(sections: dict[str, str]) -> str:
    return HEADER + "".join(f"\n## {name}\n\n{sections[name]}" for name in sorted(sections))


def public_args(args: list[str]) -> list[str]:
    """The arguments that change a result: without ``--work DIR`` (where this machine kept the
    intermediate files, a folder no reader has)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--work":
            skip = True
        elif not arg.startswith("--work="):
            out.append(arg)
    return out


def with_public_args(body: str) -> str:
    """A section as written, its Arguments line held to :func:`public_args` (sections written
    before that rule named the writer's own work folder)."""
    def public(match: re.Match[str]) -> str:
        shown = public_args(shlex.split(match.group(1)))
        return f" Arguments: `{' '.join(shown)}`." if shown else ""

    head, newline, rest = body.partition("\n")
    return ARGUMENTS.sub(public, head) + newline + rest


def run(script: str, args: list[str] = ()) -> tuple[str, bool]:
    """(section body, ok) of one benchmark run, with ``args`` on its command line."""
    name = os.path.basename(script)
    print(f"==> {name} {' '.join(args)}".rstrip(), flush=True)
    facts = machine_facts()
    shown = public_args(args)
    if shown:
        facts += f" Arguments: `{' '.join(shown)}`."
    proc = subprocess.run([sys.executable, script, *args], stdout=subprocess.PIPE, text=True)
    print(proc.stdout)
    if proc.returncode:
        return f"_{facts}_ FAILED (exit {proc.returncode}); see the console output.\n", False
    return f"_{facts}_\n\n{proc.stdout.strip()}\n", True


def failed_over(previous: str | None, failure: str) -> str:
    """The section of a benchmark whose run failed: the last good run's section kept (numbers the
    docs cite stay), the failure noted under it; with none, the failure alone."""
    if previous is None or FAILED.search(previous.partition("\n")[0]):
        return failure
    kept = [line for line in previous.rstrip("\n").split("\n") if not FAILURE_NOTE.match(line)]
    return "\n".join(kept).rstrip("\n") + "\n\n" + f"Latest run failed: {failure.strip()}\n"


def main(argv: list[str], folder: str = HERE) -> int:
    """Run the benchmarks ``argv`` names (all when empty) in ``folder``; update its RESULTS.md."""
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    results = os.path.join(folder, "RESULTS.md")
    scripts = sorted(glob.glob(os.path.join(folder, "bench_*.py")))
    argv, script_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    if script_args and len(argv) != 1:
        print("run_all: arguments after -- need exactly one benchmark named before them", file=sys.stderr)
        return 2
    if argv:
        unknown = sorted(set(argv) - {os.path.basename(s)[len("bench_"):-len(".py")] for s in scripts})
        if unknown:
            print(f"run_all: no benchmark named {', '.join(unknown)}", file=sys.stderr)
            return 2
        scripts = [s for s in scripts if os.path.basename(s)[len("bench_"):-len(".py")] in argv]
    failed = []
    for script in scripts:
        body, ok = run(script, script_args)
        if not ok:
            failed.append(os.path.basename(script))
        # Re-read before each write: another section may have been written meanwhile.
        sections = read_sections(open(results).read()) if os.path.exists(results) else {}
        name = os.path.basename(script)
        sections[name] = body if ok else failed_over(sections.get(name), body)
        sections = {name: with_public_args(text) for name, text in sections.items()}
        with open(results + ".tmp", "w") as f:
            f.write(render(sections))
        os.replace(results + ".tmp", results)
        print(f"wrote the {os.path.basename(script)} section of {results}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("run_all: stopped (Ctrl-C); the sections written before stay in RESULTS.md", file=sys.stderr)
        sys.exit(130)
