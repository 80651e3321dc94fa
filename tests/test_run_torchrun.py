"""``torchrun --nproc_per_node 2 -m distill_core train RUN.yaml``: every rank trains, rank 0 evaluates and exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_run_config import model_folder, run_file

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_run_file_trains_under_torchrun_and_exports_once(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model_folder(tmp_path / "teacher", garbage=False, seed=0)
    model_folder(tmp_path / "student", layers=1, garbage=False, seed=1)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "DISTILL_PLUGIN_DISTRIBUTIONS": "distill",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, "-m", "distill_core", "train", str(run_file(tmp_path, training={"ckpt_steps": 2}))],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # 9 training examples: 5 per rank (the sampler pads), 2 batches of 3 a rank, 2 epochs
    assert (
        done.stdout.count("steps: 4 (effective batch 6 = batch_size 3 x gradient_accumulation_steps 1 x 2 processes)")
        == 1
    )
    assert done.stdout.count("exported the student to") == 1 and done.stdout.count("top-1 agreement") == 1
    assert sorted(path.name for path in (tmp_path / "out" / "checkpoints").glob("*.pt")) == [
        "step-00000002.pt",
        "step-00000004.pt",
    ]
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["tokens"] > 0  # rank 0 evaluated every held-out example
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")
    untrained = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    final_weights = torch.load(tmp_path / "out" / "gs4.pkl", weights_only=True)
    torch.testing.assert_close(
        exported.model.layers[0].mlp.up_proj.weight, final_weights["model.layers.0.mlp.up_proj.weight"], rtol=0, atol=0
    )
    assert not torch.equal(untrained.model.layers[0].mlp.up_proj.weight, exported.model.layers[0].mlp.up_proj.weight)
