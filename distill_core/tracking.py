"""Loss terms of a run: kept on the device per step, averaged over ranks and written at logging points.

Each optimisation step hands its ``[total, *unweighted terms]`` vector (a device tensor) to the
tracker, which only keeps a reference; token-level runs add a 0/1 flag per step (no position
counted), logged as a count of steps. At a logging point the interval's vectors are stacked, summed
across ranks (one all-reduce under torch.distributed) and read back to the host: one host-device
sync every ``log_steps`` optimisation steps, none in between. Rank 0 writes tensorboardX scalars and
draws the progress bar. The end of training (or early stopping) flushes a last, partial interval.

Extra scalars (e.g. the teacher cache's) are host values each rank counts on its own; how they
combine across ranks depends on what they are, so each says it: a :class:`Count` is summed (the
entries every rank stored), a :class:`Ratio` is the ratio of the summed parts (hits / lookups of
all ranks), a plain float is averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Count:
    """A count of this rank's; logged as the sum over ranks."""

    value: float


@dataclass(frozen=True)
class Ratio:
    """This rank's ``numerator / denominator``; logged as the sum of numerators over the sum of denominators.

    Not logged at a point where the summed denominator is 0 (nothing to rate).
    """

    numerator: float
    denominator: float


#: an extra scalar as a teacher source reports it; see the module docstring for how ranks combine
ExtraScalar = float | Count | Ratio


class Tracker:
    """Per-step loss vectors in, scalars and a progress bar out (on the main process)."""

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
        sum_across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
        world_size: int = 1,
    ) -> None:
        self.log_steps = log_steps
        self.term_names = term_names
        self.is_main = is_main
        self.sum_across_ranks = sum_across_ranks
        self.world_size = world_size
        self.steps: list[int] = []  # the optimisation steps of the interval not yet logged
        self.values: list[torch.Tensor | list[torch.Tensor]] = []  # their [total, *terms, *flags], on the device
        self.flag_names: list[str] = []  # per-step 0/1 columns after the terms (add_flag)
        self.last_logged_step = initial_step
        self.writer = None
        self.bar = None
        if is_main and log_dir is not None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(log_dir=log_dir)
        if is_main and progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, desc="distill", unit="step", dynamic_ncols=True)

    def add_step(self, global_step: int, values: torch.Tensor | list[torch.Tensor]) -> None:
        """Keep one optimisation step's ``[total, *terms]`` (a vector, or a list of 0-d tensors; no sync, no op)."""
        self.steps.append(global_step)
        self.values.append(values)
        if self.bar is not None:
            self.bar.update(1)

    def add_flag(self, name: str, zero: torch.Tensor) -> None:
        """From now on each step's vector ends with a 0/1 flag, written as ``steps/<name>``.

        The scalar is the number of steps of the logging interval whose flag was 1. The steps already
        kept (of the interval not yet logged) get ``zero`` (a 0-d float32 device tensor).
        """
        self.flag_names.append(name)
        self.values = [
            [*row, zero] if isinstance(row, list) else torch.cat([row, zero.reshape(1)]) for row in self.values
        ]

    def interval(self) -> torch.Tensor | None:
        """The interval's vectors stacked to (steps, 1 + terms + flags), averaged over ranks; None if empty.

        A collective under torch.distributed: every rank calls it at the same steps.
        """
        if not self.values:
            return None
        rows = self.values
        if all(isinstance(row, list) for row in rows):  # one stack for the whole interval
            stacked = torch.stack([value for row in rows for value in row]).view(len(rows), -1)
        else:
            stacked = torch.stack([row if isinstance(row, torch.Tensor) else torch.stack(row) for row in rows])
        if stacked.dtype != torch.float32:
            stacked = stacked.float()
        if self.sum_across_ranks is not None:
            stacked = self.sum_across_ranks(stacked) / self.world_size
        return stacked

    def log(
        self,
        global_step: int,
        *,
        weights: list[float],
        lrs: list[float],
        temperature: float | torch.Tensor | None,
        stacked: torch.Tensor | None = None,
        extra: Mapping[str, ExtraScalar] | None = None,
    ) -> list[float] | None:
        """Write the interval's means at ``global_step`` and start a new interval.

        ``stacked``: :meth:`interval`, if the caller already has it. ``extra``: more scalars (host
        values, e.g. ``teacher_cache/hit_rate``), combined across ranks as their kind says (every rank
        must pass the same names) and also shown in the progress bar. Returns the means that were read
        (total first), or None when the interval was empty.
        """
        if stacked is None:
            stacked = self.interval()
        if stacked is None:
            return None
        extra = self._combine_ranks(extra, stacked.device) if extra else None
        means = stacked.mean(dim=0)
        if isinstance(temperature, torch.Tensor):  # per-example temperatures: read with the losses
            temperature = temperature.detach().float().mean().reshape(1).to(means.device)
            read = torch.cat([means, temperature]).tolist()
            values, temperature = read[:-1], read[-1]
        else:
            values = means.tolist()  # the one sync per logging interval
        self.steps, self.values = [], []
        self.last_logged_step = global_step
        total, terms, flags = values[0], values[1 : 1 + len(self.term_names)], values[1 + len(self.term_names) :]
        if self.writer is not None:
            self.writer.add_scalar("loss/total", total, global_step)
            for name, value, weight in zip(self.term_names, terms, weights):
                self.writer.add_scalar(f"loss/{name}", value, global_step)
                self.writer.add_scalar(f"weighted/{name}", value * weight, global_step)
            for index, lr in enumerate(lrs):
                self.writer.add_scalar(f"lr/group{index}", lr, global_step)
            if temperature is not None:
                self.writer.add_scalar("temperature", temperature, global_step)
            for name, mean in zip(self.flag_names, flags):
                self.writer.add_scalar(f"steps/{name}", round(mean * stacked.shape[0]), global_step)
            for tag, value in (extra or {}).items():
                self.writer.add_scalar(tag, value, global_step)
        if self.bar is not None:
            shown = {tag.rsplit("/", 1)[-1]: f"{value:.3g}" for tag, value in (extra or {}).items()}
            self.bar.set_postfix(loss=f"{total:.4g}", lr=f"{lrs[0]:.3g}" if lrs else "-", **shown, refresh=False)
        return values

    def _combine_ranks(self, extra: Mapping[str, ExtraScalar], device: torch.device) -> dict[str, float]:
        """The extra scalars of all ranks together (one all-reduce under torch.distributed)."""
        parts: list[float] = []
        for value in extra.values():
            if isinstance(value, Ratio):
                parts += [value.numerator, value.denominator]
            else:
                parts.append(value.value if isinstance(value, Count) else float(value))
        if self.sum_across_ranks is not None:  # float64: counts stay exact past float32's 2**24
            parts = self.sum_across_ranks(torch.tensor(parts, dtype=torch.float64, device=device)).tolist()
        combined, index = {}, 0
        for name, value in extra.items():
            if isinstance(value, Ratio):
                numerator, denominator = parts[index], parts[index + 1]
                index += 2
                if denominator:
                    combined[name] = numerator / denominator
                continue
            combined[name] = parts[index] if isinstance(value, Count) else parts[index] / self.world_size
            index += 1
        return combined

    def scalars(self, tag_values: dict[str, float], global_step: int) -> None:
        if self.writer is not None:
            for tag, value in tag_values.items():
                self.writer.add_scalar(tag, value, global_step)

    def status(self, text: str) -> None:
        """Show what the run is doing besides training steps (an evaluation, a checkpoint)."""
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=True)

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
