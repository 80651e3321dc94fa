"""Mixed precision: autocast for the forward passes, a GradScaler for float16 only.

``TrainingConfig.mixed_precision`` is ``"no"``, ``"fp16"`` or ``"bf16"``, on the CPU and on CUDA.
Both models run under ``torch.autocast``; the loss plugins upcast to float32 themselves, so the loss
terms are float32 whatever the autocast dtype. float16 has a narrow exponent range, so its gradients
are scaled (``torch.amp.GradScaler``); bfloat16 has float32's range and needs no scaler.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_NO_CONTEXT = contextlib.nullcontext()  # reusable: nullcontext keeps no state


class Precision:
    """Autocast context, scaled backward and optimizer step for one precision mode."""

    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode = mode
        self.dtype = DTYPES.get(mode)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
        #: why half-precision student weights without mixed precision fail, and the fix (see check_weights)
        self.weights_advice: str | None = None

    def check_weights(self, weights: torch.dtype) -> None:
        """Warn (and keep :attr:`weights_advice` for the non-finite error) when the student's weights are
        float16/bfloat16 and training is not mixed precision: see :func:`low_precision_weights_advice`."""
        self.weights_advice = low_precision_weights_advice(weights, self.mode)
        if self.weights_advice is not None:
            warnings.warn(self.weights_advice, UserWarning, stacklevel=3)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return _NO_CONTEXT
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skips the update when a gradient is not finite
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def low_precision_weights_advice(weights: torch.dtype, mode: str) -> str | None:
    """Return why training a student whose parameters are float16/bfloat16 without mixed precision fails, and the fix.

    None when the weights are not half precision or ``mode`` (``TrainingConfig.mixed_precision``)
    is mixed. Without autocast every activation, gradient and update is computed in the weights'
    dtype: float16 overflows above 65504, bfloat16 keeps about 3 significant digits (small updates
    round away). Mixed precision keeps float32 weights and computes in the half dtype under autocast.
    """
    if mode != "no" or weights not in (torch.float16, torch.bfloat16):
        return None
    name, fix = ("float16", "fp16") if weights == torch.float16 else ("bfloat16", "bf16")
    trouble = "overflow above 65504" if fix == "fp16" else "lose updates smaller than 1/256 of a weight"
    return (
        f"the student's parameters are {name} and TrainingConfig.mixed_precision is 'no', so its activations, "
        f"gradients and optimizer updates are {name} and {trouble}; keep the weights in float32 "
        f"(student.float()) and set TrainingConfig.mixed_precision='{fix}', which computes in {name} under "
        f"autocast" + (" with a gradient scaler" if fix == "fp16" else "")
    )
