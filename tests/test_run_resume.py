"""``distill train RUN.yaml --resume``: a run killed after a checkpoint ends as the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_run_config import model_folder, run_file

from distill_core import checkpoint as ckpt
from distill_core.run import train_from_file

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "_run_file_worker.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DISTILL_PLUGIN_DISTRIBUTIONS": "distill"}


def _wait_for(marker: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else "the worker ended"
        assert time.monotonic() < deadline, "the worker never reached its checkpoint"
        time.sleep(0.2)


def test_a_run_killed_after_its_second_checkpoint_resumes_to_the_uninterrupted_result(tmp_path) -> None:
    model_folder(tmp_path / "teacher", garbage=False, seed=0)
    model_folder(tmp_path / "student", layers=1, garbage=False, seed=1)
    training = {"ckpt_steps": 2, "output_dir": str(tmp_path / "whole"), "log_dir": str(tmp_path / "whole-logs")}
    whole = run_file(tmp_path, training=training)
    train_from_file(whole, say=lambda line: None)  # 2 epochs of 3 steps

    stopped = tmp_path / "stopped.yaml"
    stopped.write_text(whole.read_text().replace(str(tmp_path / "whole"), str(tmp_path / "stopped")))
    marker = tmp_path / "at-step-4"
    process = subprocess.Popen(
        [sys.executable, str(WORKER), str(stopped), "--block-at", "4", "--marker", str(marker)],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(marker, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert [step for step, _ in ckpt.list_states(tmp_path / "stopped")] == [2, 4]
    assert not (tmp_path / "stopped" / "final").exists()

    done = subprocess.run(
        [sys.executable, "-m", "distill_core", "train", str(stopped), "--resume"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "stopped" / "final" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(resumed[name], weight, rtol=0, atol=1e-6, msg=name)
    untrained = load_file(tmp_path / "student" / "model.safetensors")
    assert not torch.equal(untrained["model.layers.0.mlp.up_proj.weight"], resumed["model.layers.0.mlp.up_proj.weight"])
