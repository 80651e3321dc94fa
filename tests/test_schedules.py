"""Temperature and weight schedules: formulas, and their effect inside training."""

from __future__ import annotations

import math

import pytest
import torch

from distill_core import DistillationConfig, Distillation, TrainingConfig
from distill_core.schedules import build_temperature_scheduler, weight_at
from tests.tb_reader import read_scalars
from tests.tiny import bert_adaptor, dict_batches, tiny_bert, tiny_data


def naive_flsw(logits_S, logits_T, base, beta, gamma, eps=1e-4):
    weights = []
    for s, t in zip(logits_S.tolist(), logits_T.tolist()):
        ns = math.sqrt(sum(x * x for x in s)) + eps
        nt = math.sqrt(sum(x * x for x in t)) + eps
        cosine = sum((a / ns) * (b / nt) for a, b in zip(s, t))
        weights.append((1 - cosine) ** gamma)
    mean = sum(weights) / len(weights)
    return [base + (mean - w) * beta for w in weights]


def naive_cwsm(logits_S, base, beta, eps=1e-4):
    weights = []
    for row in logits_S.tolist():
        exps = [math.exp(x) for x in row]
        weights.append(1 / (max(exps) / sum(exps) + eps))
    mean = sum(weights) / len(weights)
    return [base + (mean - w) * beta for w in weights]


def test_flsw_and_cwsm_match_their_formulas() -> None:
    torch.manual_seed(0)
    logits_S, logits_T = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    flsw = build_temperature_scheduler("flsw", {"beta": 2.0, "gamma": 1.5})(logits_S, logits_T, 4.0)
    assert flsw.shape == (6,) and not flsw.requires_grad  # per example, without gradient
    assert flsw.tolist() == pytest.approx(naive_flsw(logits_S, logits_T, 4.0, 2.0, 1.5), abs=1e-5)
    cwsm = build_temperature_scheduler("cwsm", {"beta": 0.5})(logits_S, logits_T, 4.0)
    assert cwsm.tolist() == pytest.approx(naive_cwsm(logits_S, 4.0, 0.5), abs=1e-5)
    assert build_temperature_scheduler("constant")(logits_S, logits_T, 4.0) == 4.0
    # the mean temperature stays the base one: examples are only re-weighted
    assert float(flsw.mean()) == pytest.approx(4.0, abs=1e-5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("none", [2.0, 2.0, 2.0]),
        ("constant", [2.0, 2.0, 2.0]),
        ("linear_growth", [0.0, 1.0, 2.0]),
        ("linear_decay", [2.0, 1.0, 0.0]),
    ],
)
def test_weight_schedules(name, expected) -> None:
    assert [weight_at(name, 2.0, p) for p in (0.0, 0.5, 1.0)] == pytest.approx(expected)


def test_schedules_drive_training(tmp_path) -> None:
    teacher, student = tiny_bert(32, 4, 4, seed=0), tiny_bert(16, 2, 2, seed=1)
    config = DistillationConfig(
        temperature=3,
        temperature_scheduler=["flsw", 1, 1],
        kd_loss_weight=2,
        kd_loss_weight_scheduler="linear_decay",
        hard_label_weight=1,
        hard_label_weight_scheduler="linear_growth",
    )
    train_config = TrainingConfig(
        output_dir=str(tmp_path / "out"),
        log_dir=str(tmp_path / "logs"),
        device="cpu",
        progress_bar=False,
        log_steps=1,
        ckpt_steps=100,
    )
    distiller = Distillation(train_config, config, teacher, student, bert_adaptor, bert_adaptor)
    with distiller:
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.01), None, dict_batches(tiny_data(32), 8), num_epochs=1
        )
    scalars = read_scalars(tmp_path / "logs")
    kd, kd_weighted = dict(scalars["loss/kd"]), dict(scalars["weighted/kd"])
    hard, hard_weighted = dict(scalars["loss/hard_label"]), dict(scalars["weighted/hard_label"])
    # step s of 4 runs at progress (s − 1)/4: kd weight 2·(1 − p), hard-label weight p
    for step in (1, 2, 3, 4):
        progress = (step - 1) / 4
        assert kd_weighted[step] == pytest.approx(kd[step] * 2 * (1 - progress), abs=1e-6)
        assert hard_weighted[step] == pytest.approx(hard[step] * progress, abs=1e-6)
    total = dict(scalars["loss/total"])
    assert total[3] == pytest.approx(kd_weighted[3] + hard_weighted[3], abs=1e-5)  # what was applied
    # flsw keeps the batch-mean temperature at the base value
    assert [value for _, value in scalars["temperature"]] == pytest.approx([3.0] * 4, abs=1e-4)
