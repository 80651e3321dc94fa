"""Teacher outputs as a source: what the loop asks for each micro-batch before the step's backward.

A :class:`TeacherSource` prepares a micro-batch (:class:`~distill_core.step.MicroBatch`): each
needed teacher's adapted outputs with its KD logits as a view, the custom-match features, and the
number of valid KD positions for token means over the whole step. Two implementations:

- :class:`LiveTeachers` runs the teachers (under ``no_grad``) and adapts their outputs;
- :class:`~distill_core.teacher_cache.source.CachedTeachers` reads stored outputs, and asks a
  :class:`LiveTeachers` for the examples it does not hold.

:class:`NoTeachers` serves plain training (:class:`~distill_core.distillers.BasicTraining`).
"""

from __future__ import annotations

import abc

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill_core.adaptors import FEATURE_KEYS, check_adaptor_output
from distill_core.batches import call_model
from distill_core.step import MicroBatch, TeacherOutput
from distill_core.adaptors.logits import logits_view

if TYPE_CHECKING:
    from distill_core.adaptors import BoundAdaptor
    from distill_core.distillers.routing import TeacherRouting
    from distill_core.terms.loss import DistillationLoss
    from distill_core.tracking import ExtraScalar

__all__ = ["LiveTeachers", "NoTeachers", "TeacherSource"]


class TeacherSource(abc.ABC):
    """Where a batch's teacher outputs come from (see the module docstring)."""

    #: whether :meth:`prepare` needs each batch's example keys (the loop then records them)
    wants_example_keys = False

    @abc.abstractmethod
    def prepare(self, batch: Any, task: str | None, model_args: Mapping[str, Any], examples: Any = None) -> MicroBatch:
        """The micro-batch with its teachers' outputs; ``examples``: its example keys when wanted."""

    def log_scalars(self) -> dict[str, ExtraScalar]:
        """Return extra scalars to write at logging points: host values of this rank.

        Each says how ranks combine (:mod:`distill_core.tracking`): a ``Count`` is summed, a ``Ratio``
        is the ratio of the summed parts, a float is averaged. Every rank returns the same names.
        """
        return {}

    def close(self) -> None:  # noqa: B027 (a no-op unless a source holds files)
        """End the training session (release files)."""


class NoTeachers(TeacherSource):
    """No teacher: the micro-batch is the batch."""

    def prepare(self, batch: Any, task: str | None, model_args: Mapping[str, Any], examples: Any = None) -> MicroBatch:
        return MicroBatch(batch=batch, task=task)


def micro_batch(
    batch: Any,
    task: str | None,
    teacher: dict[Any, TeacherOutput],
    captured: dict[Any, torch.Tensor],
    routing: TeacherRouting,
    with_logits: bool,
) -> MicroBatch:
    """A micro-batch with its KD positions counted from the (first) KD teacher's logits."""
    tokens = None
    if with_logits:
        view = routing.kd_teachers(teacher, task)[0][1]
        tokens = None if view is None else view.count()
    return MicroBatch(batch=batch, task=task, teacher=teacher, captured=captured, tokens=tokens)


class LiveTeachers(TeacherSource):
    """Runs the teachers a batch needs, without gradient, and adapts their outputs.

    :param teachers: the teacher modules by key, as the runtime prepared them.
    :param adaptors: their bound adaptors by key.
    :param trim: keep only what the losses read (the outputs of a whole accumulation step, or of a
        batch about to be stored, are held at once); off for one micro-batch per step, where the
        outputs are used at once.
    """

    def __init__(
        self,
        teachers: Mapping[Any, nn.Module],
        adaptors: Mapping[Any, BoundAdaptor],
        routing: TeacherRouting,
        loss: DistillationLoss,
        *,
        trim: bool,
    ) -> None:
        self.teachers = teachers
        self.adaptors = adaptors
        self.routing = routing
        self.loss = loss
        self.trim = trim
        self.with_logits = loss.kd is not None
        self._checked: set[tuple[Any, str | None]] = set()  # (teacher, task) whose outputs passed the contract check
        self._wanted: dict[tuple[Any, str | None], dict[str, set[int]]] = {}

    def run(
        self, batch: Any, task: str | None, model_args: Mapping[str, Any], keys: list[Any]
    ) -> tuple[dict[Any, Mapping[str, Any]], dict[tuple, torch.Tensor]]:
        """The adapted outputs of the teachers ``keys`` and their custom-match features."""
        results: dict[Any, Mapping[str, Any]] = {}
        with torch.no_grad():
            for key in keys:
                adaptor = self.adaptors[key]
                outputs = call_model(self.teachers[key], adaptor.model_batch(batch), adaptor.call_args(model_args))
                adapted = adaptor(batch, outputs, task)
                if (key, task) not in self._checked:  # the first batch of each teacher and task
                    role = self.routing.role_T(key)
                    # the teachers' own losses are never used: unlabelled data gives None there
                    check_adaptor_output(_without_losses(adapted), role)
                    self._checked.add((key, task))
                results[key] = self._needed(key, task, adapted) if self.trim else adapted
        captured = {}
        for bound in self.loss.custom:  # custom-match features of the teachers, taken before the next batch runs
            key = self.routing.match_teacher(bound.spec, task)
            if key in results:
                capture_key = ("teacher", bound.spec.module_T, key)
                captured[capture_key] = self.loss.capture.take(capture_key, bound.label).detach()
        return results, captured

    def prepare(self, batch: Any, task: str | None, model_args: Mapping[str, Any], examples: Any = None) -> MicroBatch:
        results, captured = self.run(batch, task, model_args, self.routing.keys_for(task))
        with_logits = self.with_logits
        teacher = {key: TeacherOutput(r, logits_view(r) if with_logits else None) for key, r in results.items()}
        return micro_batch(batch, task, teacher, captured, self.routing, with_logits)

    def _needed(self, key: Any, task: str | None, results: Mapping[str, Any]) -> Mapping[str, Any]:
        """The part of a teacher's adapted outputs that the configured losses read.

        Feature lists keep their length (so layer indices still check) but drop the layers no match
        reads.
        """
        if not isinstance(results, Mapping):
            return results
        wanted = self._wanted.get((key, task))
        if wanted is None:
            wanted = self._wanted[(key, task)] = self.loss.wanted_layers(key, task)
        kept: dict[str, Any] = {}
        for name, value in results.items():
            if name in FEATURE_KEYS:
                if name in wanted and isinstance(value, (list, tuple)):
                    kept[name] = [layer if index in wanted[name] else None for index, layer in enumerate(value)]
                elif name in wanted:
                    kept[name] = value
            elif name != "losses":
                kept[name] = value
        return kept


def _without_losses(results: Any) -> Any:
    if not isinstance(results, Mapping) or "losses" not in results:
        return results
    return {key: value for key, value in results.items() if key != "losses"}
