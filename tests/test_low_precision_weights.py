"""A student with float16/bfloat16 parameters trained without mixed precision (issue 22, item 5).

Such a run overflows (float16) or rounds updates away (bfloat16); the fix is float32 weights with
``mixed_precision='fp16'`` or ``'bf16'``. distill says so at setup, and the non-finite error names that
cause instead of the learning rate.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from distill_core import BasicTraining, NonFiniteLossError, TrainingConfig
from distill_core.runtime.precision import low_precision_weights_advice


class Regression(nn.Module):
    """A linear model whose squared error overflows float16 (targets of 1e3: errors squared pass 65504)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((self.linear(inputs).squeeze(-1) - targets) ** 2).mean()


def batches(dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, 4, generator=generator).to(dtype)
    return [(inputs, torch.full((8,), 1e3, dtype=dtype))] * 2


def trainer(tmp_path, model: nn.Module, **config) -> BasicTraining:
    return BasicTraining(
        TrainingConfig(output_dir=str(tmp_path / "out"), device="cpu", progress_bar=False, log_steps=1, **config),
        model,
        lambda batch, loss: {"losses": [loss]},
    )


def test_a_float16_student_without_mixed_precision_is_named_as_the_cause_at_setup_and_on_overflow(tmp_path) -> None:
    model = Regression().half()
    run = trainer(tmp_path, model)
    with pytest.warns(UserWarning, match=r"parameters are float16 and TrainingConfig\.mixed_precision is 'no'"):
        with pytest.raises(NonFiniteLossError) as caught:
            run.train(torch.optim.SGD(model.parameters(), lr=1e-3), dataloader=batches(torch.float16), num_epochs=1)
    message = str(caught.value)
    assert "the likely cause: the student's parameters are float16" in message
    assert "keep the weights in float32 (student.float()) and set TrainingConfig.mixed_precision='fp16'" in message
    assert "lower the learning rate" not in message

    # the fix it gives: float32 weights under fp16 autocast train on the same data, with no warning
    model = Regression()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*TrainingConfig.mixed_precision is 'no'")
        state = trainer(tmp_path / "fixed", model, mixed_precision="fp16").train(
            torch.optim.SGD(model.parameters(), lr=1e-3), dataloader=batches(torch.float32), num_epochs=1
        )
    assert state.global_step == 2


def test_the_advice_names_the_dtype_and_the_matching_mixed_precision() -> None:
    bf16 = low_precision_weights_advice(torch.bfloat16, "no")
    assert bf16 is not None and "parameters are bfloat16" in bf16 and "mixed_precision='bf16'" in bf16
    assert low_precision_weights_advice(torch.float32, "no") is None
    assert low_precision_weights_advice(torch.bfloat16, "bf16") is None
