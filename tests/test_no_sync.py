"""The training step reads no tensor value back to the host except at logging points.

On a GPU each such read (``.item()``, ``float(t)``, ``if t:``...) stalls the step until the device
catches up. This test records every such call made from distill's own code during a run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from distill_core import DistillationConfig, Distillation, TrainingConfig
from tests.tiny import bert_adaptor, dict_batches, tiny_bert, tiny_data

OURS = tuple(
    str(Path(__import__(name).__file__).parent)
    for name in ("distill_core", "distill_plugins_losses", "distill_plugins_projections")
)
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


@pytest.fixture
def host_reads(monkeypatch):
    """Patch tensor methods that read values to the host; record the distill frames that call them."""
    records: list[str] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, __original=original, __name=name, **kwargs):
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(OURS):
                records.append(f"{__name} at {frame.f_code.co_filename}:{frame.f_lineno}")
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return records


def test_no_host_reads_between_logging_points(tmp_path, host_reads) -> None:
    teacher, student = tiny_bert(32, 4, 4, seed=0), tiny_bert(16, 2, 2, seed=1)
    config = DistillationConfig(
        temperature_scheduler=["flsw", 1, 1],
        hard_label_weight=0.5,
        intermediate_matches=[
            {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 16, 32]},
            {
                "layer_T": 3,
                "layer_S": 1,
                "feature": "attention",
                "loss": "attention_ce_mean",
                "params": {"inputs": "probs"},
            },
            {"layer_T": [0, 4], "layer_S": [0, 2], "feature": "hidden", "loss": "gram", "proj": ["linear", 16, 32]},
        ],
    )
    steps_seen: list[int] = []
    reads_at_step: list[int] = []

    def postprocess(batch):
        reads_at_step.append(len(host_reads))
        return batch

    train_config = TrainingConfig(
        output_dir=str(tmp_path / "out"),
        log_dir=str(tmp_path / "logs"),
        device="cpu",
        progress_bar=False,
        log_steps=4,
        ckpt_steps=1000,
    )
    distiller = Distillation(
        train_config,
        config,
        teacher,
        student,
        bert_adaptor,
        bert_adaptor,
        custom_matches=[
            {
                "module_T": "bert.encoder.layer.3.attention.self.query",
                "module_S": "bert.encoder.layer.1.attention.self.query",
                "loss": "relation_kl",
            }
        ],
    )
    with distiller:
        distiller.train(
            torch.optim.AdamW(student.parameters(), lr=1e-3),
            None,
            dict_batches(tiny_data(64), 8),
            num_steps=8,
            batch_postprocessor=postprocess,
            max_grad_norm=1.0,
            output_hidden_states=True,
            output_attentions=True,
            callback=lambda **_: steps_seen.append(1),
        )
    # reads happen only at the logging steps 4 and 8 (one .tolist() each), and at the final checkpoint
    # after step 8; batches 1-4 and 5-8 in between read nothing
    between = [reads_at_step[i + 1] - reads_at_step[i] for i in range(len(reads_at_step) - 1)]
    assert between == [0, 0, 0, 1, 0, 0, 0], (between, host_reads)
    assert host_reads[0].startswith("tolist at") and "tracking.py" in host_reads[0]
