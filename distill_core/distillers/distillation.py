"""BasicTraining, BasicDistillation and Distillation: how each computes its loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from distill_core.adaptors import (
    FEATURE_KEYS,
    Adaptor,
    BoundAdaptor,
    as_list,
    check_adaptor_output,
    check_pair,
    feature_mask,
    select_layers,
)
from distill_core.config import CustomMatch, DistillationConfig, TrainingConfig
from distill_core.distillers.base import BaseDistiller
from distill_core.errors import AdaptorError, DistillError, PluginError, ShapeMismatchError
from distill_core.loop import MicroBatch, RunState, StepInfo, call_model
from distill_core.matching import BoundMatch, OutputCapture, bind_match, resolve_submodule
from distill_core.registry import get_registry
from distill_core.schedules import build_temperature_scheduler, weight_at
from distill_core.vocab import check_vocabularies


def _hard_label_loss(results: Mapping[str, Any], role: str) -> torch.Tensor:
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


def _losses_for_check(results: Any, role: str, used: bool, setting: str) -> Any:
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
            check_adaptor_output(_losses_for_check(results, "adaptor", True, "labels in every batch"), "adaptor")
            self._checked_tasks.add(task)
        loss = _hard_label_loss(results, "adaptor")
        return loss, [loss]


def probability_shift(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return a copy of ``logits`` with the true label's logit swapped with the largest one.

    Positions whose label is negative (ignore index, e.g. -100) are left unchanged.
    """
    labels = labels.to(logits.device).long()
    if labels.shape != logits.shape[:-1]:
        raise AdaptorError(
            f"probability_shift: labels of shape {tuple(labels.shape)} do not fit logits of shape "
            f"{tuple(logits.shape)} (expected {tuple(logits.shape[:-1])})"
        )
    valid = labels >= 0
    label_index = labels.clamp_min(0).unsqueeze(-1)
    top_index = logits.argmax(dim=-1, keepdim=True)
    label_value = logits.gather(-1, label_index)
    top_value = logits.gather(-1, top_index)
    shifted = logits.scatter(-1, label_index, top_value).scatter(-1, top_index, label_value)
    return torch.where(valid.unsqueeze(-1), shifted, logits)


class Distillation(BaseDistiller):
    """KD on logits, hard-label losses, intermediate matches with projections, and custom matches.

    :param custom_matches: matches between any two submodules, by dotted path:
        ``{"module_T": "bert.encoder.layer.5.attention.self.query", "module_S": "...", "loss":
        "relation_kl", "weight": 1, "proj": ..., "params": {...}}``; their outputs are captured with
        forward hooks while the distiller is in use.
    :param tokenizer_T: with ``tokenizer_S``, the tokenizers of a token-level (language-model) run: their
        vocabularies are compared at setup (see ``DistillationConfig.kd_vocab_size`` for a padded one).
    """

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: nn.Module,
        model_S: nn.Module,
        adaptor_T: Adaptor | None,
        adaptor_S: Adaptor | None,
        custom_matches: Sequence[dict[str, Any] | CustomMatch] | None = None,
        *,
        tokenizer_T: Any = None,
        tokenizer_S: Any = None,
    ) -> None:
        self._init_distillation(
            train_config,
            distill_config,
            {0: model_T},
            model_S,
            {0: adaptor_T},
            {None: adaptor_S},
            custom_matches,
            tokenizer_T=tokenizer_T,
            tokenizer_S=tokenizer_S,
        )

    # -- setup -----------------------------------------------------------------------------------
    def _init_distillation(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig | dict[str, Any],
        teachers: dict[Any, nn.Module],
        model_S: nn.Module,
        adaptors_T: dict[Any, Adaptor | None],
        adaptors_S: dict[Any, Adaptor | None],
        custom_matches: Sequence[dict[str, Any] | CustomMatch] | None,
        tokenizer_T: Any = None,
        tokenizer_S: Any = None,
    ) -> None:
        if distill_config is None:
            raise TypeError(f"{type(self).__name__} needs a distill_config (DistillationConfig)")
        super().__init__(train_config, model_S, distill_config)
        config = self.distill_config
        for key, teacher in teachers.items():
            if not isinstance(teacher, nn.Module):
                raise TypeError(f"teacher {key!r} must be a torch.nn.Module, got {type(teacher).__name__}")
        self.teachers = dict(teachers)
        self.adaptors_T = {
            key: BoundAdaptor(a, self._role_T(key), model=self.teachers[key]) for key, a in adaptors_T.items()
        }
        self.adaptors_S = {
            key: BoundAdaptor(a, "adaptor_S" if key is None else f"adaptor_S[{key!r}]", model=model_S)
            for key, a in adaptors_S.items()
        }
        self.use_kd = config.kd_loss_weight > 0
        self.kd_vocab_size = None
        if self.use_kd:
            for teacher in self.teachers.values():  # before any step: a vocabulary mismatch is a setup error
                self.kd_vocab_size = check_vocabularies(
                    teacher, model_S, tokenizer_T=tokenizer_T, tokenizer_S=tokenizer_S, vocab_size=config.kd_vocab_size
                )
        registry = get_registry()
        self.kd_component = registry.get("kd_loss", config.kd_loss_type)
        self.kd_params = self.kd_component.validate_params(config.kd_loss_params)
        name, params = config.temperature_schedule()
        self.temperature_fn = None if name in ("none", "constant") else build_temperature_scheduler(name, params)
        self.use_hard_label = config.hard_label_weight > 0
        self.matches: list[BoundMatch] = [bind_match(m, i, "match") for i, m in enumerate(config.intermediate_matches)]
        for bound in self.matches:
            self._check_teacher_index(bound)
        self.projections = nn.ModuleList(bound.projection for bound in self.matches)
        customs = [c if isinstance(c, CustomMatch) else CustomMatch.model_validate(c) for c in custom_matches or []]
        self.custom: list[BoundMatch] = [bind_match(c, i, "custom") for i, c in enumerate(customs)]
        for bound in self.custom:  # unknown submodule paths fail here, at construction
            self._check_teacher_index(bound)
            resolve_submodule(
                self.teachers[self._teacher_key(bound.spec)], bound.spec.module_T, f"{bound.label}: the teacher"
            )
            resolve_submodule(model_S, bound.spec.module_S, f"{bound.label}: the student")
        self.custom_projections = nn.ModuleList(bound.projection for bound in self.custom)
        self.capture = OutputCapture()
        self._weights_at: tuple[tuple[int, int] | None, list[float]] = (None, [])
        self._terms = (
            (["kd"] if self.use_kd else [])
            + (["hard_label"] if self.use_hard_label else [])
            + [b.term for b in self.matches + self.custom]
        )
        if not self._terms:
            raise DistillError(
                "nothing to train: kd_loss_weight and hard_label_weight are 0 and there are no matches; set "
                "kd_loss_weight > 0, hard_label_weight > 0, or add intermediate_matches"
            )

    def _role_T(self, key: Any) -> str:
        return "adaptor_T" if key == 0 and len(self.teachers) == 1 else f"adaptor_T[{key!r}]"

    def _teacher_key(self, spec: Any) -> Any:
        return spec.teacher if spec.teacher is not None else 0

    def _check_teacher_index(self, bound: BoundMatch) -> None:
        key = self._teacher_key(bound.spec)
        if key not in self.teachers:
            raise DistillError(f"{bound.label}: teacher {key!r} does not exist; teachers are {sorted(self.teachers)}")

    def _projection_groups(self) -> list[tuple[nn.Module, dict[str, Any]]]:
        return [(b.projection, b.spec.proj.group_options) for b in self.matches + self.custom if b.spec.proj]

    def _attach_hooks(self) -> None:
        for bound in self.custom:
            key = self._teacher_key(bound.spec)
            self.capture.attach(
                ("teacher", bound.spec.module_T, key),
                resolve_submodule(self.teachers[key], bound.spec.module_T, "the teacher"),
            )
            self.capture.attach(
                ("student", bound.spec.module_S), resolve_submodule(self.model_S, bound.spec.module_S, "the student")
            )

    def _detach_hooks(self) -> None:
        self.capture.detach()

    def term_names(self) -> list[str]:
        return self._terms

    def current_weights(self, state: RunState) -> list[float]:
        """The weight of each term at this step (schedules change them once per optimisation step)."""
        if self._weights_at[0] == (state.global_step, state.total_steps):
            return self._weights_at[1]
        config, progress = self.distill_config, state.progress()
        weights = []
        if self.use_kd:
            weights.append(weight_at(config.kd_loss_weight_scheduler, config.kd_loss_weight, progress))
        if self.use_hard_label:
            weights.append(weight_at(config.hard_label_weight_scheduler, config.hard_label_weight, progress))
        weights.extend(b.spec.weight for b in self.matches + self.custom)
        self._weights_at = ((state.global_step, state.total_steps), weights)
        return weights

    # -- the step --------------------------------------------------------------------------------
    def teacher_keys(self, task: str | None) -> list[Any]:
        """Which teachers this batch needs (all of them outside multi-task runs)."""
        return list(self.teachers)

    def match_teacher(self, spec: Any, task: str | None) -> Any:
        """The key of the teacher a match reads (its ``teacher`` index, default 0)."""
        return self._teacher_key(spec)

    def teacher_outputs(
        self, batch: Any, task: str | None, model_args: Mapping[str, Any]
    ) -> dict[Any, Mapping[str, Any]]:
        """Run the needed teachers without gradient and adapt their outputs (one place: a cache can stand in)."""
        results = {}
        with torch.no_grad():
            for key in self.teacher_keys(task):
                adaptor = self.adaptors_T[key]
                outputs = call_model(self.teachers[key], adaptor.model_batch(batch), adaptor.call_args(model_args))
                results[key] = adaptor(batch, outputs, task)
        return results

    def student_adaptor(self, task: str | None) -> BoundAdaptor:
        return self.adaptors_S[None]

    def prepare(self, batch: Any, task: str | None, model_args: Mapping[str, Any]) -> MicroBatch:
        """Run the teachers on ``batch`` (before the step's first backward) and keep what the losses read."""
        results_T = self.teacher_outputs(batch, task, model_args)
        if task not in self._checked_tasks:
            for key, results in results_T.items():
                check_adaptor_output(_losses_for_check(results, self._role_T(key), False, ""), self._role_T(key))
        micro = MicroBatch(batch=batch, task=task)
        micro.teacher = {key: self._needed(key, task, results) for key, results in results_T.items()}
        for bound in self.custom:  # custom-match features of the teachers, taken before the next batch runs
            key = self.match_teacher(bound.spec, task)
            capture_key = ("teacher", bound.spec.module_T, key)
            micro.captured[capture_key] = self.capture.take(capture_key, bound.label).detach()
        if self.use_kd:
            micro.tokens = self._kd_positions(micro.teacher)
        return micro

    def _needed(self, key: Any, task: str | None, results: Mapping[str, Any]) -> dict[str, Any]:
        """The part of a teacher's adapted outputs that the configured losses read.

        Feature lists keep their length (so layer indices still check) but drop the layers no match
        reads: the teachers' outputs of a whole optimisation step are held at once.
        """
        if not isinstance(results, Mapping):
            return results
        wanted: dict[str, set[int]] = {}
        for bound in self.matches:
            if self.match_teacher(bound.spec, task) == key:
                layers = bound.spec.layer_T if isinstance(bound.spec.layer_T, list) else [bound.spec.layer_T]
                wanted.setdefault(bound.spec.feature, set()).update(layers)
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

    def _kd_positions(self, results_T: dict[Any, Mapping[str, Any]]) -> torch.Tensor | None:
        """Valid KD positions of a micro-batch for token-level (3-D) logits, from the teacher side; else None."""
        results = next(iter(results_T.values()))
        logits = as_list(results.get("logits"))
        if not logits or logits[0].dim() != 3:
            return None
        mask = results.get("logits_mask")
        if mask is None:
            return torch.tensor(float(logits[0].shape[0] * logits[0].shape[1]), device=logits[0].device)
        return (mask != 0).sum().to(torch.float32)

    def step_tokens(self, micro_batches: list[MicroBatch]) -> torch.Tensor | None:
        counts = [micro.tokens for micro in micro_batches]
        if not counts or any(count is None for count in counts):
            return None
        return torch.stack(counts).sum() if len(counts) > 1 else counts[0].clone()

    def _first_step_checks(
        self, results_S: Mapping[str, Any], results_T: dict[Any, Mapping[str, Any]], task: str | None
    ) -> None:
        role_S = "adaptor_S" if task is None else f"adaptor_S[{task!r}]"
        setting = "DistillationConfig.hard_label_weight=0"
        check_adaptor_output(_losses_for_check(results_S, role_S, self.use_hard_label, setting), role_S)
        for key, results in results_T.items():
            check_pair(results_S, results, self._role_T(key), needs_logits=self.use_kd, vocab_size=self.kd_vocab_size)
        if self.use_kd:
            self._check_kd_masks(results_S, next(iter(results_T.values())), role_S, self._role_T(next(iter(results_T))))

    @staticmethod
    def _check_kd_masks(results_S: Mapping[str, Any], results_T: Mapping[str, Any], role_S: str, role_T: str) -> None:
        """Token-level KD counts a step's positions from the teacher's mask, before the student runs."""
        logits = as_list(results_S.get("logits"))
        if not logits or logits[0].dim() != 3:
            return
        mask_S, mask_T = results_S.get("logits_mask"), results_T.get("logits_mask")
        if mask_S is not None and mask_T is None:
            raise AdaptorError(
                f"{role_S} returns 'logits_mask' but {role_T} does not: token-level KD averages over the valid "
                f"positions of the whole optimisation step, counted from the teacher's outputs before the student "
                f"runs; return the same 'logits_mask' from {role_T}"
            )
        if mask_S is not None and not torch.equal(mask_S != 0, mask_T.to(mask_S.device) != 0):
            raise AdaptorError(
                f"{role_S} and {role_T} return different 'logits_mask' tensors; KD compares the same positions of "
                f"both models, so return the same mask from both adaptors"
            )

    def _teacher_results(
        self, results_T: dict[Any, Mapping[str, Any]], bound: BoundMatch, task: str | None
    ) -> Mapping[str, Any]:
        key = self.match_teacher(bound.spec, task)
        try:
            return results_T[key]
        except KeyError:
            raise DistillError(
                f"{bound.label} reads teacher {key!r}, but this batch ran teachers {sorted(results_T, key=str)}; "
                f"make teacher_keys() include it, or point the match at a teacher that runs"
            ) from None

    def _kd_target(self, results_T: dict[Any, Mapping[str, Any]]) -> list[torch.Tensor]:
        return as_list(next(iter(results_T.values())).get("logits"))

    def _kd_loss(
        self,
        results_S: Mapping[str, Any],
        results_T: dict[Any, Mapping[str, Any]],
        micro: MicroBatch,
        step: StepInfo,
    ) -> torch.Tensor:
        config = self.distill_config
        logits_S = as_list(results_S.get("logits"))
        logits_T = self._kd_target(results_T)
        mask = results_S.get("logits_mask")
        if mask is None:
            mask = next(iter(results_T.values())).get("logits_mask")
        labels = results_S.get("labels") if config.probability_shift else None
        if config.probability_shift and labels is None:
            raise AdaptorError("probability_shift=True needs 'labels' from adaptor_S (the true class ids)")
        total = None
        vocab = self.kd_vocab_size
        for index, (student, teacher) in enumerate(zip(logits_S, logits_T)):
            if vocab is not None and student.shape[-1] != vocab:  # a padded vocabulary: its shared first N
                student, teacher = student[..., :vocab], teacher[..., :vocab]
            if labels is not None:
                teacher = probability_shift(
                    teacher, as_list(labels)[index] if isinstance(labels, (list, tuple)) else labels
                )
            temperature: float | torch.Tensor = config.temperature
            if self.temperature_fn is not None:
                temperature = self.temperature_fn(student, teacher, config.temperature)
                if isinstance(temperature, torch.Tensor) and temperature.dim() > 1:
                    temperature = temperature.flatten(1).mean(dim=1)  # one temperature per example
            self.last_temperature = temperature
            try:
                loss = self.kd_component.call(
                    name=config.kd_loss_type,
                    logits_S=student,
                    logits_T=teacher,
                    temperature=temperature,
                    mask=mask if student.dim() == 3 else None,
                    params=self.kd_params,
                )
            except ShapeMismatchError as exc:
                raise ShapeMismatchError(f"kd_loss_type {config.kd_loss_type!r} on logits {index}: {exc}") from exc
            total = loss if total is None else total + loss
        if total is None:
            raise AdaptorError("no logits to distil: adaptor_S and adaptor_T returned empty 'logits'")
        if micro.tokens is not None and step.tokens is not None:
            # the plugin averaged over this micro-batch's positions; make it a share of the step's mean
            # (the loop divides by the micro-batch count, DDP averages over ranks)
            share = micro.tokens * float(step.micro_batches * step.world_size)
            total = total * (share / step.tokens.clamp_min(1.0))
        return total

    def compute_loss(
        self, micro: MicroBatch, state: RunState, model_args: Mapping[str, Any], step: StepInfo
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, task, results_T = micro.batch, micro.task, micro.teacher
        adaptor_S = self.student_adaptor(task)
        outputs_S = call_model(self.model_S, adaptor_S.model_batch(batch), adaptor_S.call_args(model_args))
        results_S = adaptor_S(batch, outputs_S, task)
        check = task not in self._checked_tasks
        if check:
            self._first_step_checks(results_S, results_T, task)
        weights = self.current_weights(state)
        terms: list[torch.Tensor] = []
        if self.use_kd:
            terms.append(self._kd_loss(results_S, results_T, micro, step))
        if self.use_hard_label:
            terms.append(_hard_label_loss(results_S, "adaptor_S"))
        for bound in self.matches:
            spec = bound.spec
            teacher_results = self._teacher_results(results_T, bound, task)
            feature_T = select_layers(teacher_results, spec.feature, spec.layer_T, "the teacher's adaptor", bound.label)
            feature_S = select_layers(results_S, spec.feature, spec.layer_S, "adaptor_S", bound.label)
            match_mask = feature_mask(results_S, spec.feature)  # the feature's own mask, else inputs_mask
            if match_mask is None:
                match_mask = feature_mask(teacher_results, spec.feature)
            terms.append(bound.compute(feature_S, feature_T, match_mask, check))
        for bound in self.custom:
            feature_T = micro.captured[("teacher", bound.spec.module_T, self.match_teacher(bound.spec, task))]
            feature_S = self.capture.take(("student", bound.spec.module_S), bound.label)
            terms.append(bound.compute(feature_S, feature_T, results_S.get("inputs_mask"), check))
        if self.custom:
            self.capture.clear()
        if check:
            self._check_terms(terms)
        total = terms[0] * weights[0]
        for term, weight in zip(terms[1:], weights[1:]):
            total = total + term * weight
        if check:
            self._checked_tasks.add(task)
        return total, terms

    def _check_terms(self, terms: list[torch.Tensor]) -> None:
        """First step only: every loss a plugin returned must be a floating-point scalar tensor.

        Otherwise the error would come from ``backward()`` ("grad can be implicitly created only for
        scalar outputs"), naming neither the match nor the plugin.
        """
        sources: list[tuple[str, Any]] = []
        if self.use_kd:
            sources.append((f"kd_loss_type {self.distill_config.kd_loss_type!r}", self.kd_component))
        if self.use_hard_label:
            sources.append(("the hard-label loss", None))
        sources.extend((bound.label, bound.component) for bound in self.matches + self.custom)
        for term, (where, component) in zip(terms, sources):
            if isinstance(term, torch.Tensor) and term.dim() == 0 and term.is_floating_point():
                continue
            got = (
                f"a tensor of shape {tuple(term.shape)} and dtype {term.dtype}"
                if isinstance(term, torch.Tensor)
                else f"a {type(term).__name__}"
            )
            provider = "" if component is None else f": plugin {component.plugin!r} ({component.distribution})"
            raise PluginError(
                f"{where}{provider} returned {got}; a loss must be a floating-point scalar tensor. Reduce it "
                f"inside the loss (e.g. .mean() over the unmasked positions)"
            )


class BasicDistillation(Distillation):
    """Logits KD plus hard-label losses (no intermediate or custom matches)."""

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: nn.Module,
        model_S: nn.Module,
        adaptor_T: Adaptor | None,
        adaptor_S: Adaptor | None,
        **tokenizers: Any,
    ) -> None:
        config = (
            distill_config
            if isinstance(distill_config, DistillationConfig)
            else DistillationConfig.model_validate(distill_config)
        )
        if config.intermediate_matches:
            raise DistillError(
                "BasicDistillation does only logits KD and hard-label losses, but the config has "
                f"{len(config.intermediate_matches)} intermediate_matches; use Distillation for those"
            )
        super().__init__(train_config, config, model_T, model_S, adaptor_T, adaptor_S, **tokenizers)
