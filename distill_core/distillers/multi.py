"""Several teachers (a weighted ensemble) and several tasks (one teacher each): thin constructors.

Both are :class:`~distill_core.distillers.distillation.ComposedDistillation` with another teacher
routing; multi-task training also gives ``train`` a :class:`~distill_core.batches.TaskMixture`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from distill_core.adaptors import Adaptor
from distill_core.batches import TaskMixture
from distill_core.config import CustomMatch, DistillationConfig, TrainingConfig
from distill_core.distillers.distillation import ComposedDistillation
from distill_core.distillers.routing import TaskTeachers, WeightedEnsemble
from distill_core.state import RunState

__all__ = ["BasicMultiTeacherDistillation", "MultiTaskDistillation", "MultiTeacherDistillation"]


class MultiTeacherDistillation(ComposedDistillation):
    """KD towards the (weighted) average of several teachers' logits.

    :param model_T: a list of teachers.
    :param adaptor_T: one adaptor for all teachers, or a list with one per teacher.
    :param teacher_weights: the averaging weights (default: equal).
    Intermediate and custom matches work too; a match names its teacher by index with ``teacher``
    (default 0).
    """

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: Sequence[nn.Module],
        model_S: nn.Module,
        adaptor_T: Adaptor | Sequence[Adaptor | None] | None,
        adaptor_S: Adaptor | None,
        teacher_weights: Sequence[float] | None = None,
        custom_matches: Sequence[dict[str, Any] | CustomMatch] | None = None,
        *,
        tokenizer_T: Any = None,
        tokenizer_S: Any = None,
    ) -> None:
        routing = WeightedEnsemble(model_T, adaptor_T, adaptor_S, teacher_weights)
        super().__init__(
            train_config,
            distill_config,
            routing,
            model_S,
            custom_matches,
            tokenizer_T=tokenizer_T,
            tokenizer_S=tokenizer_S,
        )

    @property
    def teacher_weights(self) -> list[float]:
        """The averaging weights, normalised to sum to 1."""
        return self.routing.weights


#: the seed's other spelling
BasicMultiTeacherDistillation = MultiTeacherDistillation


class MultiTaskDistillation(ComposedDistillation):
    """One student learns several tasks from one teacher each.

    :param model_T: ``{task: teacher}``.
    :param adaptor_T: ``{task: adaptor}`` for the teachers.
    :param adaptor_S: ``{task: adaptor}`` for the student (an adaptor may take a ``task`` argument).
    :param task_weights: ``{task: weight}`` multiplying that task's loss (default 1).
    Train with ``train(optimizer, dataloaders={task: loader}, num_steps=N, tau=1.0)``.
    """

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: Mapping[str, nn.Module],
        model_S: nn.Module,
        adaptor_T: Mapping[str, Adaptor | None],
        adaptor_S: Mapping[str, Adaptor | None],
        task_weights: Mapping[str, float] | None = None,
    ) -> None:
        routing = TaskTeachers(model_T, adaptor_T, adaptor_S, task_weights)
        super().__init__(train_config, distill_config, routing, model_S)

    @property
    def task_weights(self) -> dict[str, float]:
        """The weight multiplying each task's loss."""
        return self.routing.weights

    def train(  # type: ignore[override]
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        dataloader: Any = None,
        num_epochs: int | None = None,
        callback: Any = None,
        *,
        dataloaders: Mapping[str, Any] | None = None,
        tau: float = 1.0,
        num_steps: int | None = None,
        **kwargs: Any,
    ) -> RunState:
        """Train on batches of all tasks: each batch's task is drawn with probability ∝ size^tau.

        :param dataloaders: ``{task: loader}``, one per teacher.
        :param tau: 1 samples tasks in proportion to their sizes, 0 uniformly.
        Other arguments as :meth:`Distillation.train`; tasks are sampled without end, so pass ``num_steps``.
        """
        self._check_positional_order(scheduler, dataloader, num_epochs)
        if dataloader is not None:
            raise TypeError("MultiTaskDistillation.train() takes dataloaders={task: loader}, not dataloader=")
        if dataloaders is None:
            raise TypeError("MultiTaskDistillation.train() needs dataloaders={task: loader}")
        if set(dataloaders) != set(self.teachers):
            raise ValueError(
                f"dataloaders has tasks {sorted(dataloaders)} but the teachers are for {sorted(self.teachers)}"
            )
        mixture = TaskMixture(dataloaders, tau)
        return super().train(optimizer, scheduler, mixture, num_epochs, callback, num_steps=num_steps, **kwargs)
