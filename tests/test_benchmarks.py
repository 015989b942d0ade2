"""benchmarks/run_all.py keeps one dated section per benchmark (a partial run rewrites its own);
bench_quality.py keeps earlier rows only when they were measured on the same held-out tiles."""
import sys
from pathlib import Path

import pytest

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


def test_a_failed_run_keeps_the_last_good_section_and_says_it_failed(tmp_path):
    bench(tmp_path, "alpha", 7)
    assert run_all.main([], str(tmp_path)) == 0
    good = run_all.read_sections((tmp_path / "RESULTS.md").read_text())["bench_alpha.py"]
    (tmp_path / "bench_alpha.py").write_text("raise SystemExit(4)\n")
    assert run_all.main([], str(tmp_path)) == 1
    assert run_all.main([], str(tmp_path)) == 1  # a second failure replaces the first note
    section = run_all.read_sections((tmp_path / "RESULTS.md").read_text())["bench_alpha.py"]
    body, note = section.rstrip("\n").rsplit("\n", 1)
    assert body.rstrip("\n") + "\n" == good and "| 7 |" in body
    assert note.startswith("Latest run failed: _Run 20") and "FAILED (exit 4)" in note
    bench(tmp_path, "alpha", 8)
    assert run_all.main([], str(tmp_path)) == 0
    section = run_all.read_sections((tmp_path / "RESULTS.md").read_text())["bench_alpha.py"]
    assert "| 8 |" in section and "failed" not in section.lower()


def test_run_all_help_prints_its_usage_and_ctrl_c_ends_it_in_one_line(tmp_path):
    import shutil
    import signal
    import subprocess
    import time

    script = f"{REPO}/benchmarks/run_all.py"
    for flag in ("-h", "--help"):
        proc = subprocess.run([sys.executable, script, flag], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "python benchmarks/run_all.py decode datagen" in proc.stdout, proc.stderr
    shutil.copy(script, tmp_path / "run_all.py")  # its own folder is the benchmarks folder
    (tmp_path / "bench_slow.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    # pytest-xdist's workers ignore SIGINT, and a child inherits that: restore the default, as a shell's
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run_all.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().startswith("==> bench_slow.py")
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "stopped" in err


def test_arguments_after_a_double_dash_reach_the_one_named_benchmark(tmp_path, capsys):
    (tmp_path / "bench_args.py").write_text("import sys\nprint('### args ' + ' '.join(sys.argv[1:]))\n")
    assert run_all.main(["args", "--", "--only", "transformer"], str(tmp_path)) == 0
    section = run_all.read_sections((tmp_path / "RESULTS.md").read_text())["bench_args.py"]
    assert "### args --only transformer" in section and "Arguments: `--only transformer`" in section
    assert run_all.main(["--", "--only", "x"], str(tmp_path)) == 2
    assert "exactly one benchmark" in capsys.readouterr().err


def test_bench_dask_compares_only_the_outputs_and_a_rerun_starts_from_empty_folders(tmp_path):
    import numpy as np
    import tifffile

    import bench_dask

    first, other = tmp_path / "out_0", tmp_path / "out_1"
    for folder in (first, other):
        folder.mkdir()
        tifffile.imwrite(folder / "section_00.tif", np.full((8, 8, 3), 9, np.uint8))
        (folder / ".section_00.tif.allen-sr.json").write_text("{}")  # a folder run's record beside it
    assert bench_dask.same_outputs(first, other)
    tifffile.imwrite(other / "section_00.tif", np.zeros((8, 8, 3), np.uint8))
    assert not bench_dask.same_outputs(first, other)
    bench_dask.make_folder(tmp_path / "in", 2)
    bench_dask.make_folder(tmp_path / "in", 1)  # the same --work again, fewer images
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["section_00.tif"]
    assert bench_dask.empty_folder(first) == first and not list(first.iterdir())


QUALITY = """# Benchmark results

## bench_quality.py

_Run 2026-11-22 11:58 on 2 cores (Intel(R) Xeon(R) Processor), 24 GiB RAM, no GPU; Python 3.11.7._

### Quality after 15 minutes of CPU training

| method | steps trained (rate) | PSNR a (2) | PSNR b (1) | PSNR all (3) | SSIM all | vs bicubic |
|:---|---:|---:|---:|---:|---:|---:|
| bicubic | - | 21.84 | 25.40 | 21.91 | 0.5990 | +0.00 dB |
| conv pixel loss, one pass | 15508 in 900 s (17.2/s) | 23.12 | 26.26 | 23.21 | 0.7009 | +1.30 dB |
| conv hybrid loss (run of 2026-11-01 10:00, AMD EPYC) | 10440 in 900 s (11.6/s) | 21.81 | 23.64 | \
21.73 | 0.6242 | -0.18 dB |
| Image Transformer mean | 1840 in 871 s (2.1/s) | 20.17 | 22.94 | 20.27 | 0.5293 | -1.64 dB |

## bench_train.py

_Run 2026-12-02 00:19 on 2 cores (Intel), 24 GiB RAM, no GPU; Python 3.11.7._

| x |
"""


def test_bench_quality_keeps_the_rows_it_does_not_rerun_only_on_the_same_tiles(tmp_path):
    import bench_quality

    results = tmp_path / "RESULTS.md"
    results.write_text(QUALITY)
    bicubic = {"psnr": 21.912, "psnr_by_source": {"a": 21.84, "b": 25.40}}
    kept = bench_quality.kept_rows(results, bicubic, {"Image Transformer mean"})
    assert [r["method"] for r in kept] == ["conv pixel loss, one pass", "conv hybrid loss"]
    assert kept[0]["kept"] == "of 2026-11-22 11:58, Intel(R) Xeon(R) Processor"
    assert kept[1]["kept"] == "of 2026-11-01 10:00, AMD EPYC"  # kept before: keeps its own run's date
    assert kept[0]["cells"] == ["15508 in 900 s (17.2/s)", "23.12", "26.26", "23.21", "0.7009"]
    assert kept[0]["psnr"] == 23.21
    # Another tile sample shows in bicubic's numbers: nothing is kept, the run is refused.
    with pytest.raises(ValueError, match="not the same held-out tiles"):
        bench_quality.kept_rows(results, dict(bicubic, psnr=21.95), set())
    with pytest.raises(ValueError, match="not the same held-out tiles"):
        bench_quality.kept_rows(results, {"psnr": 21.912, "psnr_by_source": {"a": 21.85, "b": 25.40}}, set())
    results.write_text("# Benchmark results\n")
    with pytest.raises(ValueError, match="no bench_quality table"):
        bench_quality.kept_rows(results, bicubic, set())


def test_bench_quality_puts_only_canonical_pictures_in_docs():
    import bench_quality

    docs = Path(REPO) / "docs"
    assert bench_quality.docs_grid(bench_quality.parse_args([])) == docs / "model_comparison.png"
    only = bench_quality.parse_args(["--only", "transformer", "--keep_rows"])
    assert bench_quality.docs_grid(only) == docs / "model_comparison_transformer.png"
    for other in (["--minutes", "5"], ["--it_hparams", "num_heads=1"], ["--tiles", "64"]):
        assert bench_quality.docs_grid(bench_quality.parse_args(other)) is None


def test_only_a_default_run_of_bench_it_heldout_writes_the_readme_picture():
    import bench_it_heldout

    assert bench_it_heldout.canonical(bench_it_heldout.parse_args([]))
    assert bench_it_heldout.canonical(bench_it_heldout.parse_args(["--work", "w", "--evaluate_only"]))
    for other in (["--minutes", "0.2", "--tiles", "4"], ["--free", "8"], ["--parallel", "2"],
                  ["--variant", "a=num_heads=1"], ["--modes", "greedy"]):
        assert not bench_it_heldout.canonical(bench_it_heldout.parse_args(other)), other


def test_a_picture_in_a_temporary_work_folder_is_neither_written_nor_named(tmp_path):
    import bench_quality

    short = bench_quality.parse_args(["--minutes", "1"])
    assert bench_quality.picture_at(short, bench_quality.docs_grid(short), tmp_path, "comparison.png") is None
    line = bench_quality.picture_line(None, "input, target")
    assert line.startswith("Picture: none") and "/" not in line and "--work DIR" in line
    kept = bench_quality.parse_args(["--minutes", "1", "--work", str(tmp_path)])
    assert bench_quality.picture_at(kept, None, tmp_path, "comparison.png") == tmp_path / "comparison.png"
    shown = bench_quality.picture_line(tmp_path / "c.png", "input, target")
    assert shown == f"Picture: `{tmp_path}/c.png` (input, target)."
    canonical = bench_quality.parse_args([])
    docs = bench_quality.picture_at(canonical, bench_quality.docs_grid(canonical), tmp_path, "comparison.png")
    assert bench_quality.picture_line(docs) == "Picture: `docs/model_comparison.png`."


@pytest.mark.parametrize("script", ["bench_quality", "bench_real_inputs"])
def test_reuse_runs_without_a_work_folder_is_refused(script, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit) as stop:
        module.parse_args(["--reuse_runs"])
    assert stop.value.code == 2 and "--reuse_runs needs --work DIR" in capsys.readouterr().err
    assert module.parse_args(["--reuse_runs", "--work", "w"]).reuse_runs


def test_bench_input_check_and_bench_datagen_refuse_what_they_cannot_measure(tmp_path, capsys):
    import bench_datagen
    import bench_input_check

    for folder, says in ((tmp_path / "missing", "no such folder"), (tmp_path, "no .png, .jpg or .tif images")):
        with pytest.raises(SystemExit) as stop:
            bench_input_check.main(["--images", str(folder)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and f"--images {folder}: {says}" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as stop:
        bench_datagen.main(["--repeats", "0"])
    assert stop.value.code == 2 and "--repeats must be at least 1" in capsys.readouterr().err


def test_the_arguments_line_leaves_out_where_intermediate_files_were_kept():
    assert run_all.public_args(["--work", "/tmp/x", "--minutes", "5", "--work=/y", "--parallel", "2"]) == \
        ["--minutes", "5", "--parallel", "2"]


def test_sections_written_before_that_rule_lose_their_work_folder_and_nothing_else(tmp_path):
    bench(tmp_path, "alpha", 1)
    old = ("# Benchmark results\n\n## bench_beta.py\n\n_Run 2026-12-02 11:40 on 2 cores. Arguments: "
           "`--work /tmp/private --only fast`._\n\n| 2 |\n\n## bench_gamma.py\n\n_Run 2026-12-02 12:00 "
           "on 2 cores. Arguments: `--work=/tmp/other`._\n\n| 3 | `--work` in a table stays |\n")
    (tmp_path / "RESULTS.md").write_text(old)
    assert run_all.main(["alpha"], str(tmp_path)) == 0
    sections = run_all.read_sections((tmp_path / "RESULTS.md").read_text())
    assert sections["bench_beta.py"] == "_Run 2026-12-02 11:40 on 2 cores. Arguments: `--only fast`._\n\n| 2 |\n"
    assert sections["bench_gamma.py"] == "_Run 2026-12-02 12:00 on 2 cores._\n\n| 3 | `--work` in a table stays |\n"
    assert "| 1 |" in sections["bench_alpha.py"]


def test_run_logged_keeps_the_output_and_names_the_log_when_allen_sr_fails(tmp_path):
    from allen_sr.testing.cli_runs import run_logged

    log = tmp_path / "upscale.log"
    missing = ["upscale", "--pretrained", "conv-fast", "--image", str(tmp_path / "none.png"), "--out",
               str(tmp_path / "o.png")]
    with pytest.raises(RuntimeError, match=r"allen-sr upscale failed \(exit 2\); see .*upscale.log"):
        run_logged(missing, log)
    first = log.read_text()
    assert "none.png" in first
    with pytest.raises(RuntimeError):
        run_logged(missing, log, append=True)  # `make pretrained` keeps every attempt's log
    assert log.read_text() == first * 2
    with pytest.raises(RuntimeError):
        run_logged(missing, log)
    assert log.read_text() == first


def test_bench_shipped_names_the_harshest_input_before_the_first_harm():
    import bench_shipped

    values = bench_shipped.SWEEPS["noise (grey levels)"][1]  # 1, 2, 4, 6, 8, 12

    def scores(clean, gains):
        out = {("brain", "clean"): {"m": clean}}
        out.update({("brain", bench_shipped.spec("noise", v)): {"m": g} for v, g in zip(values, gains)})
        return out

    def limit(clean, gains):
        return bench_shipped.harmless_up_to(scores(clean, gains), "m", "brain", "noise", values)

    assert limit(1.0, [0.9, 0.8, 0.5, 0.2, 0.0, 0.1]) == "every value tried"
    assert limit(1.0, [0.9, 0.8, 0.5, 0.2, -0.1, 0.3]) == "6"  # a later recovery does not count
    assert limit(1.0, [-0.01, 0.8, 0.5, 0.2, 0.1, 0.1]) == "clean only"
    assert limit(-0.2, [0.9, 0.8, 0.5, 0.2, 0.1, 0.1]) == "below bicubic even clean"
    lines = bench_shipped.envelope({**scores(1.0, [1] * 6), **{("brain", bench_shipped.spec(k, v)): {"m": 1}
                                    for k, vs in bench_shipped.SWEEPS.values() for v in vs}}, ["m"], ["brain"])
    assert lines[-1] == "| m | brain | every value tried | every value tried | every value tried |"


def test_bench_shipped_reads_each_models_own_training_ranges():
    import bench_shipped

    assert bench_shipped.trained_ranges("clean=0.5;noise=0:10@0.5;jpeg=50:95@0.8") == {
        "jpeg": (50, 95), "noise": (0, 10)}
    assert bench_shipped.trained_ranges("none") == {} and bench_shipped.trained_ranges(None) == {}
    text = bench_shipped.describe_training({"a": "blur=0:2;noise=0:5", "b": None, "c": "blur=0:2;noise=0:5"})
    assert text == "a, c: noise 0-5 grey levels, blur 0-2 px (`degradation=blur=0:2;noise=0:5`); b: not recorded"


def test_a_benchmark_keeps_its_work_folder_and_removes_a_temporary_one_however_it_ends(tmp_path):
    import bench_quality

    given = tmp_path / "work" / "deeper"
    with bench_quality.work_folder(str(given), "bench_test_") as work:
        assert work == given and work.is_dir()
    assert given.is_dir()
    with pytest.raises(RuntimeError, match="stopped"):
        with bench_quality.work_folder(None, "bench_test_") as work:
            (work / "partial.txt").write_text("x")
            raise RuntimeError("stopped")
    assert work.name.startswith("bench_test_") and not work.exists()


@pytest.mark.parametrize("script", sorted(p.name for p in Path(REPO, "benchmarks").glob("bench_*.py")))
def test_every_benchmark_answers_help_with_its_usage_and_measures_nothing(script, tmp_path):
    """`bench_train.py --help` started the whole benchmark (a training), as did bench_upscale and
    bench_download: every script reads its command line before it measures anything."""
    import subprocess

    proc = subprocess.run([sys.executable, f"{REPO}/benchmarks/{script}", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stdout[-500:] + proc.stderr[-1500:]
    assert not list(tmp_path.iterdir())
