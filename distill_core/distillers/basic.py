"""BasicTraining: plain supervised training of one model on its adaptor's losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from distill_core.adaptors import Adaptor, BoundAdaptor, checked_plain_step
from distill_core.batches import call_model
from distill_core.config import TrainingConfig
from distill_core.distillers.base import BaseDistiller
from distill_core.positions import PaddingCheck
from distill_core.step import MicroBatch, StepInfo, StepLoss
from distill_core.terms.hard_label import hard_label_loss

_WEIGHTS = (1.0,)


class BasicTraining(BaseDistiller):
    """Plain supervised training of one model (e.g. the teacher) on its adaptor's ``losses``."""

    def __init__(self, train_config: TrainingConfig, model: nn.Module, adaptor: Adaptor | None) -> None:
        super().__init__(train_config, model)
        self.adaptor = BoundAdaptor(adaptor, "adaptor")
        self._checked_tasks: set[str | None] = set()  # the adaptor's outputs are checked on each task's first step
        self._padding = PaddingCheck(model)

    def term_names(self) -> list[str]:
        return ["hard_label"]

    def compute_loss(
        self, micro: MicroBatch, progress: float, model_args: Mapping[str, Any], step: StepInfo
    ) -> StepLoss:
        batch, task = micro.batch, micro.task
        if task not in self._checked_tasks:
            self._padding(batch)  # padding that no attention_mask hides: a warning
        results = self.adaptor(batch, call_model(self.model_S, batch, model_args), task)

        def compute() -> StepLoss:
            loss = hard_label_loss(results, "adaptor")
            return StepLoss(loss, (loss,), _WEIGHTS, None)

        if task in self._checked_tasks:
            return compute()
        result = checked_plain_step(compute, results, "adaptor")
        self._checked_tasks.add(task)
        return result
