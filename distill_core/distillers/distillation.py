"""The one distillation class, composed with a teacher routing; Distillation and BasicDistillation.

:class:`ComposedDistillation` does all distillation: KD on logits, hard-label losses, intermediate
matches with projections, custom matches. What varies between the public distillers is only the
:class:`~distill_core.distillers.routing.TeacherRouting` it is built with (one teacher, a weighted
ensemble, one teacher per task) and the data given to ``train``; the public classes
(:class:`Distillation`, :class:`BasicDistillation`, and those in :mod:`.multi`) are thin
constructors of this composition with the seed's signatures.

A step reads top-down: the loop asks the teacher source (live teachers, or the teacher-output
cache) to prepare each micro-batch, then :meth:`ComposedDistillation.compute_loss` runs the
student, and the loss terms (:class:`~distill_core.terms.loss.DistillationLoss`) return a
:class:`~distill_core.step.StepLoss`; the loop hands its total to the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from distill_core.adaptors import (
    LOGITS_TO_KEEP_ARGS,
    Adaptor,
    BoundAdaptor,
    checked_first_step,
    forward_keywords,
    head_extra_parameters,
    model_kind,
    output_head,
)
from distill_core.batches import call_model
from distill_core.config import CustomMatch, DistillationConfig, TrainingConfig
from distill_core.distillers.base import BaseDistiller
from distill_core.distillers.routing import SingleTeacher, TeacherRouting
from distill_core.errors import DistillError
from distill_core.modules import unwrap
from distill_core.positions import PaddingCheck
from distill_core.step import MicroBatch, StepInfo, StepLoss
from distill_core.teachers import LiveTeachers, TeacherSource
from distill_core.terms.loss import DistillationLoss
from distill_core.terms.matches import resolve_submodule
from distill_core.vocab import check_vocabularies, output_vocab_size

if TYPE_CHECKING:
    from distill_core.cross_tokenizer import VocabularyPair

__all__ = ["BasicDistillation", "ComposedDistillation", "Distillation"]


class ComposedDistillation(BaseDistiller):
    """Distillation composed with a teacher routing (see the module docstring).

    :param routing: the teachers, their adaptors and the student's, and how batches and terms reach them.
    :param custom_matches: matches between any two submodules, by dotted path.
    :param tokenizer_T: with ``tokenizer_S``, the tokenizers whose vocabularies are compared at setup
        (or, with ``DistillationConfig.cross_tokenizer``, matched for KD across tokenizers).
    """

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig | dict[str, Any],
        routing: TeacherRouting,
        model_S: nn.Module,
        custom_matches: Sequence[dict[str, Any] | CustomMatch] | None = None,
        *,
        tokenizer_T: Any = None,
        tokenizer_S: Any = None,
    ) -> None:
        if distill_config is None:
            raise TypeError(f"{type(self).__name__} needs a distill_config (DistillationConfig)")
        super().__init__(train_config, model_S, distill_config)
        config = self.distill_config
        self.routing = routing
        self.teachers = dict(routing.teachers)
        checked_vocab = None
        self.tokenizers = (tokenizer_S, tokenizer_T)
        self.vocabularies = None
        if config.cross_tokenizer is not None:  # two vocabularies: matched by token strings, not compared by id
            self.vocabularies = _cross_tokenizer_vocabularies(self.teachers, model_S, tokenizer_T, tokenizer_S)
        elif config.kd_loss_weight > 0:
            for teacher in self.teachers.values():  # before any step: a vocabulary mismatch is a setup error
                checked_vocab = check_vocabularies(
                    teacher, model_S, tokenizer_T=tokenizer_T, tokenizer_S=tokenizer_S, vocab_size=config.kd_vocab_size
                )
        customs = [c if isinstance(c, CustomMatch) else CustomMatch.model_validate(c) for c in custom_matches or []]
        self.loss = DistillationLoss(
            config,
            routing,
            custom_matches=customs,
            # the KD term cuts logits only for a padded vocabulary (kd_vocab_size set): else both sizes are equal
            kd_vocab_size=checked_vocab if config.kd_vocab_size is not None else None,
        )
        self.kd_vocab_size = checked_vocab  # what the first-step checks compare
        chunk = self._chunk_plan(config, model_S, routing)
        self.adaptors_T = {
            key: BoundAdaptor(a, routing.role_T(key), model=self.teachers[key], chunked=chunk.get(("T", key), False))
            for key, a in routing.adaptors_T.items()
        }
        self.adaptors_S = {
            key: BoundAdaptor(a, routing.role_S(key), model=model_S, chunked=chunk.get(("S", key), False))
            for key, a in routing.adaptors_S.items()
        }
        self.projections = nn.ModuleList(bound.projection for bound in self.loss.matches)
        self.custom_projections = nn.ModuleList(bound.projection for bound in self.loss.custom)
        for bound in self.loss.custom:  # unknown submodule paths fail here, at construction
            key = routing.match_teacher(bound.spec, None)
            resolve_submodule(self.teachers[key], bound.spec.module_T, f"{bound.label}: the teacher")
            resolve_submodule(model_S, bound.spec.module_S, f"{bound.label}: the student")
        self._checked_tasks: set[str | None] = set()  # tasks whose first micro-batch passed the first-step checks
        self._padding = PaddingCheck(model_S, tokenizer_S if tokenizer_S is not None else tokenizer_T)
        self.teacher_cache = None
        if config.teacher_cache is not None:
            from distill_core.teacher_cache.source import make_cache

            self.teacher_cache = make_cache(config, self.loss, checked_vocab)

    def _chunk_plan(
        self, config: DistillationConfig, model_S: nn.Module, routing: TeacherRouting
    ) -> dict[tuple[str, Any], bool]:
        """Which automatic adaptors run in chunked mode: causal LMs, when KD is on and nothing needs logits."""
        wanted = config.chunked_token_kd
        kd = self.loss.kd
        why_not = "kd_loss_weight is 0" if kd is None else kd.needs_full_logits
        if wanted is False or (wanted is None and why_not):
            return {}
        if why_not:
            raise DistillError(
                f"DistillationConfig.chunked_token_kd=True, but {why_not}; set chunked_token_kd=None (chunk when "
                f"possible) or False (the models' full logits)"
            )

        def chunks(adaptor: Adaptor | None, model: nn.Module) -> bool:
            if adaptor is not None or model_kind(model) != "causal_lm":
                return False
            # a head with an adapter on it cannot be chunked: None uses its logits, True lets the adaptor say why
            head = output_head(model)
            return bool(wanted) or head is None or not head_extra_parameters(head)

        plan: dict[tuple[str, Any], bool] = {}
        for key, adaptor in routing.adaptors_S.items():
            plan[("S", key)] = chunks(adaptor, model_S)
        for key, adaptor in routing.adaptors_T.items():
            plan[("T", key)] = chunks(adaptor, self.teachers[key])
        if wanted and not all(plan[("S", key)] for key in routing.adaptors_S):
            custom = any(a is not None for a in routing.adaptors_S.values())
            raise DistillError(
                "DistillationConfig.chunked_token_kd=True needs a causal-LM student with the automatic adaptor "
                "(adaptor_S=None), or an adaptor_S that returns 'logits_hidden' and 'logits_head' itself; "
                f"this student is {type(unwrap(model_S)).__name__} with "
                f"{'a custom adaptor' if custom else 'no causal-LM head'}"
            )
        if wanted:
            self._check_logits_to_keep(plan, model_S)
        return plan

    def _check_logits_to_keep(self, plan: dict[tuple[str, Any], bool], model_S: nn.Module) -> None:
        """chunked_token_kd=True promises no (B, L, V) logits: refuse a chunked model that would build them."""
        for (side, key), chunked in plan.items():
            model = model_S if side == "S" else self.teachers[key]
            if not chunked or forward_keywords(model, LOGITS_TO_KEEP_ARGS):
                continue
            who = "the student" if side == "S" else "the teacher" if len(self.teachers) == 1 else f"teacher {key!r}"
            raise DistillError(
                f"DistillationConfig.chunked_token_kd=True, but {who} ({type(unwrap(model)).__name__}) takes neither "
                f"{' nor '.join(LOGITS_TO_KEEP_ARGS)}, in its forward or in that of a model its forward(**kwargs) "
                f"wraps, so it would build its (B, L, V) logits at every step; use a transformers version whose model "
                f"takes logits_to_keep, or set chunked_token_kd=None (the loss is still chunked, the model builds "
                f"its logits) or False (the models' full logits)"
            )

    # -- the session -----------------------------------------------------------------------------
    def _uses_part_of_student_per_step(self) -> bool:
        return self.routing.part_of_student_per_step

    def _teacher_source(self, teachers: dict[Any, nn.Module]) -> TeacherSource:
        """Live teachers, or the teacher-output cache in front of them."""
        cached = self.teacher_cache is not None
        live = LiveTeachers(
            teachers,
            self.adaptors_T,
            self.routing,
            self.loss,
            # outputs used at once need no trimming (and no Python work per step)
            trim=cached or self.train_config.gradient_accumulation_steps > 1,
        )
        if self.vocabularies is not None:
            from distill_core.cross_tokenizer.source import CrossTokenizerTeachers

            tokenizer_S, tokenizer_T = self.tokenizers
            spec = self.distill_config.cross_tokenizer
            return CrossTokenizerTeachers(
                live, tokenizer_S, tokenizer_T, self.vocabularies, self.runtime.device, max_length=spec.max_length
            )
        if not cached:
            return live
        from distill_core.teacher_cache.source import CachedTeachers

        return CachedTeachers(self.teacher_cache, live, self.runtime)

    def _attach_hooks(self) -> None:
        capture, student = self.loss.capture, self.student
        for bound in self.loss.custom:
            key = self.routing.match_teacher(bound.spec, None)
            capture.attach(
                ("teacher", bound.spec.module_T, key),
                resolve_submodule(self.teachers[key], bound.spec.module_T, "the teacher"),
            )
            module_S = resolve_submodule(student, bound.spec.module_S, "the student")
            capture.attach(("student", bound.spec.module_S), module_S)

    def _detach_hooks(self) -> None:
        self.loss.capture.detach()

    def _projection_groups(self) -> list[tuple[str, nn.Module, dict[str, Any]]]:
        return self.loss.projection_groups()

    def term_names(self) -> list[str]:
        return list(self.loss.names)

    # -- the step --------------------------------------------------------------------------------
    def compute_loss(
        self, micro: MicroBatch, progress: float, model_args: Mapping[str, Any], step: StepInfo
    ) -> StepLoss:
        """Run the student on the micro-batch and return its loss against the prepared teacher outputs."""
        batch, task = micro.batch, micro.task
        first = task not in self._checked_tasks
        if first:
            self._padding(batch)  # padding that no attention_mask hides: a warning
        adaptor_S = self.adaptors_S[self.routing.student_key(task)]
        outputs_S = call_model(self.model_S, adaptor_S.model_batch(batch), adaptor_S.call_args(model_args))
        results_S = adaptor_S(batch, outputs_S, task)
        if not first:
            return self.loss.compute(results_S, micro, step, progress)
        result = checked_first_step(
            lambda: self.loss.compute(results_S, micro, step, progress), self.loss, results_S, micro
        )
        self._checked_tasks.add(task)
        return result

    # -- the teacher cache -------------------------------------------------------------------------
    def build_teacher_cache(
        self,
        dataloader: Any = None,
        *,
        dataloaders: Mapping[str, Any] | None = None,
        batch_postprocessor: Callable[[Any], Any] | None = None,
        **model_args: Any,
    ) -> dict[str, Any]:
        """Run the teachers over the data once and store their outputs, before training.

        Examples already stored are skipped. Pass the keyword arguments ``train()`` will pass to the
        models (e.g. ``output_hidden_states=True``): they are part of the cache's fingerprint. Under
        torch.distributed each rank stores its share of the examples. The batches take the same
        path as in training (post-processor, example keys, device).

        :param dataloader: the training data (a DataLoader or a list of batches).
        :param dataloaders: ``{task: loader}`` for :class:`MultiTaskDistillation`.
        :returns: per teacher: entries, bytes, rows, positions, hits, misses and entries stored.
        """
        from distill_core.teacher_cache.source import build_cache

        if self.teacher_cache is None:
            raise DistillError(
                "build_teacher_cache() needs DistillationConfig.teacher_cache (e.g. teacher_cache='cache_dir' or "
                "{'location': 'memory'})"
            )
        entered_here = self._session is None
        if entered_here:
            self.__enter__()
        try:
            return build_cache(
                self._session.source,
                self.routing,
                self.runtime,
                dataloader,
                dataloaders,
                batch_postprocessor,
                model_args,
                progress_bar=self.runtime.is_main and self.train_config.progress_bar,
            )
        finally:
            if entered_here:
                self.__exit__(None, None, None)


def _cross_tokenizer_vocabularies(
    teachers: Mapping[Any, nn.Module], model_S: nn.Module, tokenizer_T: Any, tokenizer_S: Any
) -> VocabularyPair:
    """The run's matched vocabularies for cross-tokenizer KD, with its setup errors."""
    from distill_core.cross_tokenizer import VocabularyPair

    if tokenizer_T is None or tokenizer_S is None:
        raise DistillError(
            "DistillationConfig.cross_tokenizer needs both tokenizers, to tokenise each text for the teacher and "
            "align its tokens with the student's: pass tokenizer_T=... and tokenizer_S=..."
        )
    for role, tokenizer in (("tokenizer_T", tokenizer_T), ("tokenizer_S", tokenizer_S)):
        if not getattr(tokenizer, "is_fast", False):
            raise DistillError(
                f"DistillationConfig.cross_tokenizer aligns tokens by the bytes they cover, which needs a fast "
                f"tokenizer (offsets); {role} is {type(tokenizer).__name__}: load it with use_fast=True"
            )
    if len(teachers) != 1:
        raise DistillError(
            f"DistillationConfig.cross_tokenizer distils from one teacher, but there are {len(teachers)}"
        )
    (model_T,) = teachers.values()
    return VocabularyPair.from_tokenizers(
        tokenizer_S, tokenizer_T, vocab_size_S=output_vocab_size(model_S), vocab_size_T=output_vocab_size(model_T)
    )


class Distillation(ComposedDistillation):
    """KD on logits, hard-label losses, intermediate matches with projections, and custom matches.

    :param custom_matches: matches between any two submodules, by dotted path:
        ``{"module_T": "bert.encoder.layer.5.attention.self.query", "module_S": "...", "loss":
        "relation_kl", "weight": 1, "proj": ..., "params": {...}}``; their outputs are captured with
        forward hooks while the distiller is in use.
    :param tokenizer_T: with ``tokenizer_S``, the tokenizers of a token-level (language-model) run: their
        vocabularies are compared at setup (see ``DistillationConfig.kd_vocab_size`` for a padded one).
        With ``DistillationConfig.cross_tokenizer`` they may differ: each batch's ``texts`` are
        tokenised for the teacher and KD compares aligned token groups (docs/cross-tokenizer.md).

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
        super().__init__(
            train_config,
            distill_config,
            SingleTeacher(model_T, adaptor_T, adaptor_S),
            model_S,
            custom_matches,
            tokenizer_T=tokenizer_T,
            tokenizer_S=tokenizer_S,
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
