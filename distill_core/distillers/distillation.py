"""Distillation and BasicDistillation: KD, hard labels, intermediate and custom matches."""

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
from distill_core.distillers.basic import hard_label_loss, losses_for_check
from distill_core.distillers.cached import TeacherCacheSupport
from distill_core.distillers.kd_term import KDTerm, is_chunked
from distill_core.model_adaptors import model_kind
from distill_core.errors import AdaptorError, DistillError, PluginError
from distill_core.loop import MicroBatch, RunState, StepInfo, call_model
from distill_core.matching import BoundMatch, OutputCapture, bind_match, resolve_submodule, unwrap
from distill_core.schedules import weight_at
from distill_core.teacher_cache.keys import ExampleKeys
from distill_core.vocab import check_vocabularies


class Distillation(TeacherCacheSupport, BaseDistiller):
    """KD on logits, hard-label losses, intermediate matches with projections, and custom matches.

    :param custom_matches: matches between any two submodules, by dotted path:
        ``{"module_T": "bert.encoder.layer.5.attention.self.query", "module_S": "...", "loss":
        "relation_kl", "weight": 1, "proj": ..., "params": {...}}``; their outputs are captured with
        forward hooks while the distiller is in use.
    :param tokenizer_T: with ``tokenizer_S``, the tokenizers of a token-level (language-model) run: their
        vocabularies are compared at setup (see ``DistillationConfig.kd_vocab_size`` for a padded one).

    With ``DistillationConfig.teacher_cache`` the teachers' outputs are stored per example and read
    back instead of running the teachers again (docs/teacher-cache.md); ``build_teacher_cache()``
    fills the cache before training.
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
        self.use_kd = config.kd_loss_weight > 0
        self.kd_vocab_size = None
        if self.use_kd:
            for teacher in self.teachers.values():  # before any step: a vocabulary mismatch is a setup error
                self.kd_vocab_size = check_vocabularies(
                    teacher, model_S, tokenizer_T=tokenizer_T, tokenizer_S=tokenizer_S, vocab_size=config.kd_vocab_size
                )
        # the KD term cuts logits only for a padded vocabulary (kd_vocab_size set): else both sizes are equal
        self.kd = KDTerm(config, self.kd_vocab_size if config.kd_vocab_size is not None else None)
        self._wanted_layers: dict[tuple[Any, str | None], dict[str, set[int]]] = {}
        chunk = self._chunk_plan(config, model_S, adaptors_T, adaptors_S)
        self.adaptors_T = {
            key: BoundAdaptor(a, self._role_T(key), model=self.teachers[key], chunked=chunk.get(("T", key), False))
            for key, a in adaptors_T.items()
        }
        self.adaptors_S = {
            key: BoundAdaptor(
                a,
                "adaptor_S" if key is None else f"adaptor_S[{key!r}]",
                model=model_S,
                chunked=chunk.get(("S", key), False),
            )
            for key, a in adaptors_S.items()
        }
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
        constant = ("none", "constant")
        # with no weight schedule the weights never change: computed at the first step only
        self._weights_scheduled = (self.use_kd and config.kd_loss_weight_scheduler not in constant) or (
            self.use_hard_label and config.hard_label_weight_scheduler not in constant
        )
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
        self.teacher_cache = None if config.teacher_cache is None else self._make_cache(config)

    def _chunk_plan(
        self,
        config: DistillationConfig,
        model_S: nn.Module,
        adaptors_T: dict[Any, Adaptor | None],
        adaptors_S: dict[Any, Adaptor | None],
    ) -> dict[tuple[str, Any], bool]:
        """Which automatic adaptors run in chunked mode: causal LMs, when KD is on and nothing needs logits."""
        wanted = config.chunked_token_kd
        why_not = None if self.use_kd else "kd_loss_weight is 0"
        why_not = why_not or self.kd.needs_full_logits
        if wanted is False or (wanted is None and why_not):
            return {}
        if why_not:
            raise DistillError(
                f"DistillationConfig.chunked_token_kd=True, but {why_not}; set chunked_token_kd=None (chunk when "
                f"possible) or False (the models' full logits)"
            )
        plan: dict[tuple[str, Any], bool] = {}
        for key, adaptor in adaptors_S.items():
            plan[("S", key)] = adaptor is None and model_kind(model_S) == "causal_lm"
        for key, adaptor in adaptors_T.items():
            plan[("T", key)] = adaptor is None and model_kind(self.teachers[key]) == "causal_lm"
        if wanted and not all(plan[("S", key)] for key in adaptors_S):
            raise DistillError(
                "DistillationConfig.chunked_token_kd=True needs a causal-LM student with the automatic adaptor "
                "(adaptor_S=None), or an adaptor_S that returns 'logits_hidden' and 'logits_head' itself; "
                f"this student is {type(unwrap(model_S)).__name__} with "
                f"{'a custom adaptor' if any(a is not None for a in adaptors_S.values()) else 'no causal-LM head'}"
            )
        return plan

    def _role_T(self, key: Any) -> str:
        return "adaptor_T" if key == 0 and len(self.teachers) == 1 else f"adaptor_T[{key!r}]"

    def _teacher_key(self, spec: Any) -> Any:
        return spec.teacher if spec.teacher is not None else 0

    def _check_teacher_index(self, bound: BoundMatch) -> None:
        key = self._teacher_key(bound.spec)
        if key not in self.teachers:
            raise DistillError(f"{bound.label}: teacher {key!r} does not exist; teachers are {sorted(self.teachers)}")

    def _projection_groups(self) -> list[tuple[str, nn.Module, dict[str, Any]]]:
        return [(b.label, b.projection, b.spec.proj.group_options) for b in self.matches + self.custom if b.spec.proj]

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
        computed_for = self._weights_at[0]
        if computed_for is not None and (
            not self._weights_scheduled or computed_for == (state.global_step, state.total_steps)
        ):
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
        self, batch: Any, task: str | None, model_args: Mapping[str, Any], keys: list[Any] | None = None
    ) -> dict[Any, Mapping[str, Any]]:
        """Run the needed teachers (or ``keys``) without gradient and adapt their outputs.

        The one place teacher outputs are computed; with ``DistillationConfig.teacher_cache`` the
        cache calls it only for the teachers that miss an example of the batch.
        """
        results = {}
        with torch.no_grad():
            for key in self.teacher_keys(task) if keys is None else keys:
                adaptor = self.adaptors_T[key]
                outputs = call_model(self.teachers[key], adaptor.model_batch(batch), adaptor.call_args(model_args))
                results[key] = adaptor(batch, outputs, task)
        return results

    def student_adaptor(self, task: str | None) -> BoundAdaptor:
        return self.adaptors_S[None]

    def prepare(
        self, batch: Any, task: str | None, model_args: Mapping[str, Any], examples: ExampleKeys | None = None
    ) -> MicroBatch:
        """The teachers' outputs for ``batch`` (before the step's first backward), only what the losses read.

        With the teacher cache they come from stored entries where the batch's ``examples`` have
        them, and the teachers run only on misses.
        """
        keys = self.teacher_keys(task)
        if self.teacher_cache is None or (examples is not None and examples.generated):
            # no cache, or examples a batch_postprocessor made (on-policy samples): the teachers run on them
            teacher, captured = self._run_teachers(batch, task, model_args, keys)
        else:
            if examples is None:
                raise DistillError(
                    "DistillationConfig.teacher_cache is set, but prepare() got no example keys; the training loop "
                    "passes them (examples=ExampleKeys(...)) when the distiller is trained with train()"
                )
            self._open_cache(model_args, examples.kind)
            teacher, captured = self.teacher_cache.outputs(
                examples, keys, lambda missing: self._run_teachers(batch, task, model_args, missing), self.device
            )
        micro = MicroBatch(batch=batch, task=task, teacher=teacher, captured=captured)
        if self.use_kd:
            micro.tokens = self._kd_positions(micro.teacher)
        return micro

    def _run_teachers(
        self, batch: Any, task: str | None, model_args: Mapping[str, Any], keys: list[Any]
    ) -> tuple[dict[Any, Mapping[str, Any]], dict[tuple, torch.Tensor]]:
        """Fresh outputs of the teachers ``keys`` (checked on the first step) and their custom-match features."""
        results_T = self.teacher_outputs(batch, task, model_args, keys)
        if task not in self._checked_tasks:
            for key, results in results_T.items():
                check_adaptor_output(losses_for_check(results, self._role_T(key), False, ""), self._role_T(key))
        if self.teacher_cache is None and self.train_config.gradient_accumulation_steps == 1:
            teacher = results_T  # used at once: nothing to trim (and no Python work per step)
        else:
            teacher = {key: self._needed(key, task, results) for key, results in results_T.items()}
        captured = {}
        for bound in self.custom:  # custom-match features of the teachers, taken before the next batch runs
            key = self.match_teacher(bound.spec, task)
            if key in teacher:
                capture_key = ("teacher", bound.spec.module_T, key)
                captured[capture_key] = self.capture.take(capture_key, bound.label).detach()
        return teacher, captured

    def _needed(self, key: Any, task: str | None, results: Mapping[str, Any]) -> dict[str, Any]:
        """The part of a teacher's adapted outputs that the configured losses read.

        Feature lists keep their length (so layer indices still check) but drop the layers no match
        reads: the teachers' outputs of a whole optimisation step are held at once.
        """
        if not isinstance(results, Mapping):
            return results
        wanted = self._wanted_layers.get((key, task))
        if wanted is None:  # which layers of each feature the matches read: worked out once per teacher and task
            wanted = self._wanted_layers[(key, task)] = {}
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
        if results.get("cached_logits") is not None:  # token logits from the teacher cache: always with a mask
            return results["cached_logits"].mask.sum().to(torch.float32)
        first = results["logits_hidden"] if is_chunked(results) else results.get("logits")
        if isinstance(first, (list, tuple)):
            first = first[0] if first else None
        if not isinstance(first, torch.Tensor) or first.dim() != 3:
            return None
        mask = results.get("logits_mask")
        if mask is None:
            return torch.tensor(float(first.shape[0] * first.shape[1]), device=first.device)
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
        check_adaptor_output(losses_for_check(results_S, role_S, self.use_hard_label, setting), role_S)
        for key, results in results_T.items():
            if self.use_kd or self.teacher_cache is None:  # a cache keeps no logits that KD does not read
                check_pair(
                    results_S, results, self._role_T(key), needs_logits=self.use_kd, vocab_size=self.kd_vocab_size
                )
        if self.use_kd:
            self._check_kd_masks(results_S, next(iter(results_T.values())), role_S, self._role_T(next(iter(results_T))))

    @staticmethod
    def _check_kd_masks(results_S: Mapping[str, Any], results_T: Mapping[str, Any], role_S: str, role_T: str) -> None:
        """Token-level KD counts a step's positions from the teacher's mask, before the student runs."""
        logits = [results_S["logits_hidden"]] if is_chunked(results_S) else as_list(results_S.get("logits"))
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

    def _kd_teachers(self, results_T: dict[Any, Mapping[str, Any]]) -> list[tuple[float, Mapping[str, Any]]]:
        """The teachers whose logits make the KD target, with their weights (one teacher here)."""
        return [(1.0, next(iter(results_T.values())))]

    def _kd_target(self, results_T: dict[Any, Mapping[str, Any]]) -> list[torch.Tensor]:
        """The dense KD target of a batch: the (averaged) teachers' logits."""
        return KDTerm.target(self._kd_teachers(results_T))

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
        token_ce = None
        if self.use_kd:
            # a chunked student builds no full logits, so its hard-label loss comes from the same chunks
            chunked_labels = self.use_hard_label and is_chunked(results_S) and results_S.get("losses") is None
            kd, token_ce = self.kd.compute(
                results_S, self._kd_teachers(results_T), micro, step, hard_labels=chunked_labels
            )
            self.last_temperature = self.kd.last_temperature
            terms.append(kd)
        if self.use_hard_label:
            terms.append(token_ce if token_ce is not None else hard_label_loss(results_S, "adaptor_S"))
        as_bool: dict[int, torch.Tensor] = {}  # each mask converted once per micro-batch, not once per match
        for bound in self.matches:
            spec = bound.spec
            teacher_results = self._teacher_results(results_T, bound, task)
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
            terms.append(bound.compute(feature_S, feature_T, match_mask, check))
        for bound in self.custom:
            feature_T = micro.captured[("teacher", bound.spec.module_T, self.match_teacher(bound.spec, task))]
            feature_S = self.capture.take(("student", bound.spec.module_S), bound.label)
            terms.append(bound.compute(feature_S, feature_T, results_S.get("inputs_mask"), check))
        if self.custom:
            self.capture.clear()
        if check:
            self._check_terms(terms)
        total = None
        for term, weight in zip(terms, weights):
            weighted = term if weight == 1.0 else term * weight  # no op for the common weight 1
            total = weighted if total is None else total + weighted
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
            sources.append((f"kd_loss_type {self.distill_config.kd_loss_type!r}", self.kd.component))
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
        if torch.is_grad_enabled() and terms and not any(term.requires_grad for term in terms):
            # else backward() fails with "element 0 of tensors does not require grad", naming nothing
            raise DistillError(
                f"none of the loss terms ({', '.join(where for where, _ in sources)}) has a gradient path to the "
                f"student: adaptor_S returned tensors without gradient (detached, or computed under torch.no_grad "
                f"or inference_mode), so training would change nothing; return the student's outputs as the model "
                f"gave them"
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
