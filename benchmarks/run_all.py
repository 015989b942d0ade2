"""Run every benchmarks/bench_*.py and write benchmarks/RESULTS.md (`make bench`).

Each benchmark prints a markdown section; this script adds the machine facts and the date, so
numbers are always read next to where and when they were measured.
"""
from __future__ import annotations

import datetime
import glob
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


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
    return (f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n"
            f"- machine: {os.cpu_count()} cores ({cpu}), {mem} RAM, no GPU used\n"
            f"- python {platform.python_version()}, {platform.platform()}\n")


def main() -> int:
    # `python benchmarks/run_all.py decode datagen` runs only bench_decode.py and bench_datagen.py.
    wanted = sys.argv[1:]
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    if wanted:
        scripts = [s for s in scripts if os.path.basename(s)[len("bench_"):-len(".py")] in wanted]
    sections, failed = [], []
    for script in scripts:
        name = os.path.basename(script)
        print(f"==> {name}", flush=True)
        proc = subprocess.run([sys.executable, script], stdout=subprocess.PIPE, text=True)
        print(proc.stdout)
        if proc.returncode:
            failed.append(name)
            sections.append(f"## {name}\n\nFAILED (exit {proc.returncode}); see the console output.\n")
        else:
            sections.append(f"## {name}\n\n{proc.stdout.strip()}\n")
    text = "# Benchmark results\n\nWritten by `make bench`. Ratios are measured side by side in one run.\n"
    if wanted:
        text += f"This file holds a partial run: `python benchmarks/run_all.py {' '.join(wanted)}`.\n"
    text += "\n"
    text += machine_facts() + "\n" + "\n".join(sections)
    path = os.path.join(HERE, "RESULTS.md")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
