"""benchmarks/run_all.py keeps one dated section per benchmark: a partial run rewrites its own."""
import sys

from conftest import REPO

sys.path.insert(0, f"{REPO}/benchmarks")
import run_all  # noqa: E402


def bench(folder, name, value):
    (folder / f"bench_{name}.py").write_text(f"print('### {name}\\n\\n| x |\\n|---|\\n| {value} |')\n")


def test_a_partial_run_rewrites_only_its_own_section(tmp_path):
    bench(tmp_path, "alpha", 1)
    bench(tmp_path, "beta", 2)
    assert run_all.main([], str(tmp_path)) == 0
    first = (tmp_path / "RESULTS.md").read_text()
    assert "| 1 |" in first and "| 2 |" in first and first.count("_Run ") == 2

    bench(tmp_path, "alpha", 10)
    bench(tmp_path, "beta", 20)  # changed, but not run: its section must stay as written
    assert run_all.main(["alpha"], str(tmp_path)) == 0
    sections = run_all.read_sections((tmp_path / "RESULTS.md").read_text())
    assert "| 10 |" in sections["bench_alpha.py"]
    assert sections["bench_beta.py"] == run_all.read_sections(first)["bench_beta.py"]


def test_a_failing_benchmark_is_recorded_and_an_unknown_name_refused(tmp_path, capsys):
    (tmp_path / "bench_broken.py").write_text("raise SystemExit(3)\n")
    assert run_all.main([], str(tmp_path)) == 1
    assert "FAILED (exit 3)" in (tmp_path / "RESULTS.md").read_text()
    assert run_all.main(["nosuch"], str(tmp_path)) == 2
    assert "no benchmark named nosuch" in capsys.readouterr().err
