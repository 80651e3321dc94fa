"""Scalars to tensorboardX and a tqdm progress bar; both only on the main process.

Loss terms are accumulated on the device between logging points and read back once per interval
(one host-device sync every ``log_steps`` optimisation steps, none in between).
"""

from __future__ import annotations

from typing import Any

import torch


class Tracker:
    """Accumulates loss terms on device; writes scalars and updates the progress bar at log points."""

    def __init__(
        self,
        *,
        log_dir: str | None,
        log_steps: int,
        progress_bar: bool,
        total_steps: int,
        initial_step: int,
        is_main: bool,
        term_names: list[str],
    ) -> None:
        self.log_steps = log_steps
        self.term_names = term_names
        self.is_main = is_main
        self._sum: torch.Tensor | None = None
        self._count = 0
        self.writer = None
        self.bar = None
        if is_main and log_dir is not None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(log_dir=log_dir)
        if is_main and progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, desc="distill", unit="step", dynamic_ncols=True)

    def add(self, stacked: torch.Tensor) -> None:
        """Accumulate one micro-batch's ``[total, *unweighted terms]`` vector (no sync)."""
        if self._sum is None or self._sum.device != stacked.device:
            self._sum = stacked
        else:
            self._sum = self._sum + stacked
        self._count += 1

    def step(
        self, global_step: int, *, weights: list[float], lrs: list[float], temperature: float | torch.Tensor | None
    ) -> list[float] | None:
        """Called after each optimisation step; logs every ``log_steps`` steps.

        Returns the interval's mean total and terms when it read them (at logging points), else None.
        """
        if self.bar is not None:
            self.bar.update(1)
        if global_step % self.log_steps != 0 or self._sum is None or not self.is_main:
            return None
        means = self._sum / self._count
        if isinstance(temperature, torch.Tensor):  # per-example temperatures: read with the losses
            read = torch.cat([means, temperature.detach().float().mean().reshape(1).to(means.device)]).tolist()
            values, temperature = read[:-1], read[-1]
        else:
            values = means.tolist()  # the one sync per logging interval
        self._sum, self._count = None, 0
        total, terms = values[0], values[1:]
        if self.writer is not None:
            self.writer.add_scalar("loss/total", total, global_step)
            for name, value, weight in zip(self.term_names, terms, weights):
                self.writer.add_scalar(f"loss/{name}", value, global_step)
                self.writer.add_scalar(f"weighted/{name}", value * weight, global_step)
            for index, lr in enumerate(lrs):
                self.writer.add_scalar(f"lr/group{index}", lr, global_step)
            if temperature is not None:
                self.writer.add_scalar("temperature", temperature, global_step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{total:.4g}", lr=f"{lrs[0]:.3g}" if lrs else "-", refresh=False)
        return values

    def scalars(self, tag_values: dict[str, float], global_step: int) -> None:
        if self.writer is not None:
            for tag, value in tag_values.items():
                self.writer.add_scalar(tag, value, global_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
