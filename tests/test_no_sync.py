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


@pytest.mark.parametrize("chunked", [None, False], ids=["chunked", "full_logits"])
def test_token_level_steps_read_once_at_the_first_step_for_its_count_then_only_at_logging_points(
    tmp_path, host_reads, chunked
) -> None:
    """The first token-level step reads its count of positions (a step where none counts is refused);
    later steps only add a flag to the loss vector, read at logging points with the means."""
    from tests.tiny_lm import causal_batch, tiny_llama

    reads_at_step: list[int] = []

    def postprocess(batch):
        reads_at_step.append(len(host_reads))
        return batch

    train_config = TrainingConfig(
        output_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"), device="cpu", progress_bar=False,
        log_steps=4, ckpt_steps=1000, gradient_accumulation_steps=2,
    )
    config = DistillationConfig(kd_loss_type="kl", hard_label_weight=0.5, chunked_token_kd=chunked)
    student = tiny_llama(width=16, seed=1)
    distiller = Distillation(train_config, config, tiny_llama(seed=0), student, None, None)
    batches = [causal_batch(seed=seed) for seed in range(16)]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train(optimizer, None, batches, num_steps=8, batch_postprocessor=postprocess)
    per_step = [reads_at_step[i + 2] - reads_at_step[i] for i in range(0, len(reads_at_step) - 2, 2)]
    first_step = [read for read in host_reads[: reads_at_step[2]] if "adaptors/auto.py" not in read]  # the head check
    assert per_step[1:] == [0, 0, 1, 0, 0, 0], (per_step, host_reads)
    assert len(first_step) == 1 and first_step[0].startswith("__float__ at") and "loop.py" in first_step[0], host_reads
