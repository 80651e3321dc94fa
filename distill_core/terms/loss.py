"""The loss of a distillation step: every configured term, weighted, as one immutable result.

``total = kd_loss_weight · kd + hard_label_weight · hard_label + Σ weight_i · match_i`` (times the
task's weight in multi-task runs). :meth:`DistillationLoss.compute` takes the student's adapted
outputs and what the teacher source prepared, and returns a :class:`~distill_core.step.StepLoss`;
it keeps no state between calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from distill_core.adaptors import feature_mask, select_layers
from distill_core.config import CustomMatch, DistillationConfig
from distill_core.errors import DistillError
from distill_core.schedules import weight_at
from distill_core.step import MicroBatch, StepInfo, StepLoss, TeacherOutput
from distill_core.terms.hard_label import hard_label_loss, share_of_step_mean
from distill_core.terms.aligned_kd import AlignedKDTerm
from distill_core.terms.kd import KDTerm
from distill_core.adaptors.logits import is_chunked
from distill_core.terms.matches import BoundMatch, OutputCapture, bind_match

if TYPE_CHECKING:
    from distill_core.distillers.routing import TeacherRouting

__all__ = ["DistillationLoss"]

_CONSTANT = ("none", "constant")


class DistillationLoss:
    """The configured terms of a distillation, bound once at setup.

    :param routing: which teacher each term reads (single teacher, weighted ensemble, per task).
    :param kd_vocab_size: the shared vocabulary when the KD logits are cut to it (a padded one).
    """

    def __init__(
        self,
        config: DistillationConfig,
        routing: TeacherRouting,
        *,
        custom_matches: Sequence[CustomMatch] = (),
        kd_vocab_size: int | None = None,
    ) -> None:
        self.config = config
        self.routing = routing
        self.kd: KDTerm | AlignedKDTerm | None = None
        if config.kd_loss_weight > 0:
            self.kd = KDTerm(config, kd_vocab_size) if config.cross_tokenizer is None else AlignedKDTerm(config)
        self.kd_vocab_size = kd_vocab_size
        self.use_hard_label = config.hard_label_weight > 0
        self.matches: list[BoundMatch] = [bind_match(m, i, "match") for i, m in enumerate(config.intermediate_matches)]
        self.custom: list[BoundMatch] = [bind_match(c, i, "custom") for i, c in enumerate(custom_matches)]
        for bound in self.matches + self.custom:
            routing.check_match(bound)
        self.capture = OutputCapture()
        self.names = (
            (["kd"] if self.kd is not None else [])
            + (["hard_label"] if self.use_hard_label else [])
            + [bound.term for bound in self.matches + self.custom]
        )
        if not self.names:
            raise DistillError(
                "nothing to train: kd_loss_weight and hard_label_weight are 0 and there are no matches; set "
                "kd_loss_weight > 0, hard_label_weight > 0, or add intermediate_matches"
            )
        scheduled = (self.kd is not None and config.kd_loss_weight_scheduler not in _CONSTANT) or (
            self.use_hard_label and config.hard_label_weight_scheduler not in _CONSTANT
        )
        # without a weight schedule the weights are the config's: one tuple for the whole run
        self._fixed_weights = None if scheduled else self.weights_at(0.0)

    # -- what the terms read ---------------------------------------------------------------------
    def wanted_layers(self, key: Any, task: str | None) -> dict[str, set[int]]:
        """Which layers of each feature the intermediate matches read of teacher ``key`` (for ``task``)."""
        wanted: dict[str, set[int]] = {}
        for bound in self.matches:
            if self.routing.match_teacher(bound.spec, task) == key:
                layers = bound.spec.layer_T if isinstance(bound.spec.layer_T, list) else [bound.spec.layer_T]
                wanted.setdefault(bound.spec.feature, set()).update(layers)
        return wanted

    def custom_modules(self, key: Any, task: str | None) -> list[str]:
        """The teacher submodules whose outputs the custom matches read of teacher ``key``."""
        return sorted({b.spec.module_T for b in self.custom if self.routing.match_teacher(b.spec, task) == key})

    def projection_groups(self) -> list[tuple[str, torch.nn.Module, dict[str, Any]]]:
        """(match label, projection, optimizer group options) of each projection."""
        return [(b.label, b.projection, b.spec.proj.group_options) for b in self.matches + self.custom if b.spec.proj]

    # -- weights ---------------------------------------------------------------------------------
    def weights_at(self, progress: float) -> tuple[float, ...]:
        """The weight of each term at ``progress`` (0 to 1) of training."""
        config = self.config
        weights = []
        if self.kd is not None:
            weights.append(weight_at(config.kd_loss_weight_scheduler, config.kd_loss_weight, progress))
        if self.use_hard_label:
            weights.append(weight_at(config.hard_label_weight_scheduler, config.hard_label_weight, progress))
        weights.extend(bound.spec.weight for bound in self.matches + self.custom)
        return tuple(weights)

    # -- one micro-batch ---------------------------------------------------------------------------
    def teacher_of(self, micro: MicroBatch, bound: BoundMatch) -> TeacherOutput:
        key = self.routing.match_teacher(bound.spec, micro.task)
        try:
            return micro.teacher[key]
        except KeyError:
            raise DistillError(
                f"{bound.label} reads teacher {key!r}, but this batch ran teachers {sorted(micro.teacher, key=str)}; "
                f"point the match at a teacher that runs for this batch"
            ) from None

    def compute(
        self, results_S: Mapping[str, Any], micro: MicroBatch, step: StepInfo, progress: float
    ) -> StepLoss:
        """The loss of one micro-batch from the student's adapted outputs and the teachers' prepared ones."""
        task = micro.task
        terms: list[torch.Tensor] = []
        temperature = None
        token_ce = None
        if isinstance(self.kd, AlignedKDTerm):
            kd, temperature = self.kd.compute(results_S, micro, step)
            terms.append(kd)
        elif self.kd is not None:
            # a chunked student builds no full logits, so its hard-label loss comes from the same chunks
            chunked_labels = self.use_hard_label and is_chunked(results_S) and results_S.get("losses") is None
            kd, token_ce, temperature = self.kd.compute(
                results_S, self.routing.kd_teachers(micro.teacher, task), micro, step, hard_labels=chunked_labels
            )
            terms.append(kd)
        if self.use_hard_label:
            hard = token_ce
            if hard is None:
                hard = hard_label_loss(results_S, "adaptor_S")
                if micro.tokens is not None and step.tokens is not None:
                    # token-level outputs: the model's mean over this micro-batch, as a share of the step's mean
                    hard = share_of_step_mean(hard, micro.tokens, step)
            terms.append(hard)
        as_bool: dict[int, torch.Tensor] = {}  # each mask converted once per micro-batch, not once per match
        for bound in self.matches:
            spec = bound.spec
            teacher_results = self.teacher_of(micro, bound).results
            feature_T = select_layers(teacher_results, spec.feature, spec.layer_T, "the teacher's adaptor", bound.label)
            feature_S = select_layers(results_S, spec.feature, spec.layer_S, "adaptor_S", bound.label)
            match_mask = feature_mask(results_S, spec.feature)  # the feature's own mask, else inputs_mask
            if match_mask is None:
                match_mask = feature_mask(teacher_results, spec.feature)
            if match_mask is not None and match_mask.dtype != torch.bool:
                converted = as_bool.get(id(match_mask))
                if converted is None:
                    converted = as_bool[id(match_mask)] = match_mask != 0
                match_mask = converted
            terms.append(bound.compute(feature_S, feature_T, match_mask))
        if self.custom:
            for bound in self.custom:
                key = self.routing.match_teacher(bound.spec, task)
                feature_T = micro.captured[("teacher", bound.spec.module_T, key)]
                feature_S = self.capture.take(("student", bound.spec.module_S), bound.label)
                terms.append(bound.compute(feature_S, feature_T, results_S.get("inputs_mask")))
            self.capture.clear()
        weights = self._fixed_weights if self._fixed_weights is not None else self.weights_at(progress)
        total = None
        for term, weight in zip(terms, weights):
            weighted = term if weight == 1.0 else term * weight  # no op for the common weight 1
            total = weighted if total is None else total + weighted
        task_weight = self.routing.task_weight(task)
        if task_weight != 1.0:
            total = total * task_weight
        return StepLoss(total, tuple(terms), weights, temperature)

    def term_sources(self) -> list[tuple[str, Any]]:
        """(where, component) of each term, in order: what an error about a term names."""
        sources: list[tuple[str, Any]] = []
        if isinstance(self.kd, AlignedKDTerm):
            sources.append((f"cross_tokenizer loss {self.kd.name!r}", self.kd.component))
        elif self.kd is not None:
            sources.append((f"kd_loss_type {self.config.kd_loss_type!r}", self.kd.component))
        if self.use_hard_label:
            sources.append(("the hard-label loss", None))
        sources.extend((bound.label, bound.component) for bound in self.matches + self.custom)
        return sources

