"""Mixed precision: autocast for the forward passes, a GradScaler for float16 only.

``TrainingConfig.mixed_precision`` is ``"no"``, ``"fp16"`` or ``"bf16"``, on the CPU and on CUDA.
Both models run under ``torch.autocast``; the loss plugins upcast to float32 themselves, so the loss
terms are float32 whatever the autocast dtype. float16 has a narrow exponent range, so its gradients
are scaled (``torch.amp.GradScaler``); bfloat16 has float32's range and needs no scaler.
"""

from __future__ import annotations

import contextlib
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
