"""BasicTraining (plain supervised training on the adaptor's losses) and the hard-label loss helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from distill_core.adaptors import Adaptor, BoundAdaptor, as_list, check_adaptor_output
from distill_core.config import TrainingConfig
from distill_core.distillers.base import BaseDistiller
from distill_core.errors import AdaptorError
from distill_core.loop import MicroBatch, RunState, StepInfo, call_model


def hard_label_loss(results: Mapping[str, Any], role: str) -> torch.Tensor:
    losses = as_list(results.get("losses"))
    if not losses:
        raise AdaptorError(
            f"{role} returned no 'losses', but hard-label training needs them; return "
            f"{{'losses': [outputs.loss], ...}} (and pass labels in the batch)"
        )
    total = losses[0].mean()  # .mean(): DataParallel returns one loss per device
    for loss in losses[1:]:
        total = total + loss.mean()
    return total


def losses_for_check(results: Any, role: str, used: bool, setting: str) -> Any:
    """The adaptor's dict as the first-step check should see it.

    Unused ``losses`` (their weight is 0) are dropped, so unlabelled data, where Hugging Face models
    return ``loss=None``, works with the usual ``{"losses": [outputs.loss]}`` adaptor. Used ones that
    are None get a message naming the likely cause.
    """
    if not isinstance(results, Mapping) or "losses" not in results:
        return results
    if not used:
        return {key: value for key, value in results.items() if key != "losses"}
    for index, loss in enumerate(as_list(results["losses"])):
        if loss is None:
            raise AdaptorError(
                f"{role}['losses'][{index}] is None: the model returned no loss, most likely because the batch has "
                f"no labels. Add labels to the batch, or set {setting} (then distill ignores 'losses')"
            )
    return results


class BasicTraining(BaseDistiller):
    """Plain supervised training of one model (e.g. the teacher) on its adaptor's ``losses``."""

    def __init__(self, train_config: TrainingConfig, model: nn.Module, adaptor: Adaptor | None) -> None:
        super().__init__(train_config, model)
        self.adaptor = BoundAdaptor(adaptor, "adaptor")

    def term_names(self) -> list[str]:
        return ["hard_label"]

    def compute_loss(
        self, micro: MicroBatch, state: RunState, model_args: Mapping[str, Any], step: StepInfo
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, task = micro.batch, micro.task
        results = self.adaptor(batch, call_model(self.model_S, batch, model_args), task)
        if task not in self._checked_tasks:
            check_adaptor_output(losses_for_check(results, "adaptor", True, "labels in every batch"), "adaptor")
            self._checked_tasks.add(task)
        loss = hard_label_loss(results, "adaptor")
        return loss, [loss]
