"""The LM demo's trainings, written against distill's public API.

- :func:`distil`: :class:`~distill_core.Distillation` with ``adaptor_T=adaptor_S=None``: both models
  are causal LMs, so distill picks the automatic causal-LM adaptor and chunked token KD (hidden
  states x head, a chunk of positions at a time; the (tokens, 49,152) logits never exist at once).
  Optionally with an :class:`~distill_core.on_policy.OnPolicySampler` as ``batch_postprocessor``.
- :func:`build_cache`: the top-k teacher-output cache, filled once before the students train.
- :func:`train_alone`: :class:`~distill_core.BasicTraining` on the model's own next-token loss,
  same blocks, steps, batch size, learning rate and schedule.

Both evaluate on the held-out blocks every ``eval_every`` steps (the callback; distill logs the
held-out loss as ``eval/metric``) and return the curve of held-out loss against steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill_core.demo.lm.measure import ForwardTimer, HeldOut, evaluate
from distill_core.demo.pipeline import TrainSettings, linear_schedule


@dataclass
class RunOutcome:
    """What one training run produced: the curve ``[(step, held-out loss)]``, and where its time went."""

    curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    teacher_seconds: float = 0.0
    teacher_calls: int = 0
    eval_seconds: float = 0.0
    sampler: dict[str, Any] | None = None
    final: HeldOut | None = None  # the last evaluation: the trained student's scores


def teacher_cache_settings(cache_folder: str | None, top_k: int, missing_mass: str = "spread") -> dict[str, Any]:
    """Return the ``DistillationConfig`` fields that make the teacher run once per example.

    The top-k teacher-output cache (DESIGN §10, docs/teacher-cache.md) in ``cache_folder``, keyed by
    the blocks' dataset indices: :func:`build_cache` fills it before the students train, and every
    distilled student (every seed; every later invocation on the same blocks) reads it instead of
    running the teacher. ``top_k=0`` stores the dense logits. A cache built for other blocks, another
    temperature or another teacher is rebuilt (``on_stale="rebuild"``). ``cache_folder=None``: no
    cache, the teacher runs in every distilled training.
    """
    if cache_folder is None:
        return {}
    return {"teacher_cache": {"location": cache_folder, "top_k": top_k or None, "missing_mass": missing_mass,
                              "on_stale": "rebuild"}}


@dataclass
class CacheBuild:
    """What :func:`build_cache` did: seconds, entries stored now and before, bytes per token on disk."""

    seconds: float
    stored: int
    entries: int
    bytes_per_token: float | None


def build_cache(teacher: nn.Module, student: nn.Module, loader: Any, distill_fields: dict[str, Any],
                settings: TrainSettings, *, tokenizer: Any = None) -> CacheBuild:
    """Run the teacher once over ``loader`` and store its outputs, before any student trains.

    ``student`` only has to exist for the distiller (no step is taken); examples already in the
    cache are skipped, so a later invocation on the same blocks finishes at once.
    """
    from distill_core import Distillation, DistillationConfig

    config = DistillationConfig(**distill_fields)
    distiller = Distillation(train_config=_train_config(settings, "no"), distill_config=config, model_T=teacher,
                             model_S=student, adaptor_T=None, adaptor_S=None, tokenizer_T=tokenizer,
                             tokenizer_S=tokenizer)
    started = time.perf_counter()
    summary = distiller.build_teacher_cache(loader)
    seconds = time.perf_counter() - started
    (record,) = summary.values()  # one teacher
    rows = record["rows"]  # the token positions whose teacher distribution is stored
    return CacheBuild(seconds=seconds, stored=record["stored"], entries=record["entries"],
                      bytes_per_token=round(record["bytes"] / rows, 1) if rows else None)


def _train_config(settings: TrainSettings, precision: str) -> Any:
    from distill_core import TrainingConfig

    # one checkpoint, at the end (distill always writes it; the demo deletes it unless asked to keep it)
    return TrainingConfig(output_dir=str(settings.output_dir), log_dir=str(settings.log_dir), device="cpu",
                          log_steps=max(1, min(5, settings.eval_every)), progress_bar=settings.progress_bar,
                          ckpt_steps=settings.steps, eval_steps=settings.eval_every, keep_last=1,
                          best_metric_mode="min", mixed_precision=precision,
                          overwrite_output_dir=True)  # a demo run starts over: it never resumes an earlier one


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def _held_out_callback(blocks: Sequence[Sequence[int]], reference: torch.Tensor | None, outcome: RunOutcome,
                       say: Callable[[str], None], label: str) -> Callable[..., float]:
    def evaluate_held_out(model: nn.Module, step: int) -> float:
        started = time.perf_counter()
        scores, _ = evaluate(model, blocks, reference=reference)
        outcome.eval_seconds += time.perf_counter() - started
        outcome.curve.append((step, scores.loss))
        outcome.final = scores
        say(f"[{label}] step {step}: held-out loss {scores.loss:.3f} (perplexity {scores.perplexity:,.1f})")
        return scores.loss  # distill logs it as eval/metric

    return evaluate_held_out


def distil(teacher: nn.Module, student: nn.Module, loader: Any, held_out: Sequence[Sequence[int]],
           settings: TrainSettings, distill_fields: dict[str, Any], *, label: str, say: Callable[[str], None],
           reference: torch.Tensor | None = None, sampler: Any = None, tokenizer: Any = None,
           precision: str = "no") -> RunOutcome:
    """Distil ``teacher`` into ``student`` with token-level KD; return the held-out curve and timings.

    :param reference: the teacher's argmax predictions on ``held_out``, for the top-1 agreement.
    :param distill_fields: ``DistillationConfig`` fields (divergence, temperature, weights, cache).
    :param sampler: an :class:`~distill_core.on_policy.OnPolicySampler` for on-policy batches, or None.
    :param precision: ``TrainingConfig.mixed_precision`` ("no" or "bf16").
    """
    from distill_core import Distillation, DistillationConfig

    outcome = RunOutcome()
    config = DistillationConfig(**distill_fields)
    distiller = Distillation(train_config=_train_config(settings, precision), distill_config=config, model_T=teacher,
                             model_S=student, adaptor_T=None, adaptor_S=None, tokenizer_T=tokenizer,
                             tokenizer_S=tokenizer)
    timer = ForwardTimer()
    started = time.perf_counter()
    with distiller, timer.attached(teacher):
        distiller.train(_optimizer(student, settings), scheduler=linear_schedule(settings), dataloader=loader,
                        num_steps=settings.steps, max_grad_norm=settings.max_grad_norm, batch_postprocessor=sampler,
                        callback=_held_out_callback(held_out, reference, outcome, say, label))
    outcome.seconds = time.perf_counter() - started
    outcome.teacher_seconds, outcome.teacher_calls = timer.seconds, timer.calls
    if sampler is not None:
        outcome.sampler = vars(sampler.stats).copy()
    return outcome


def train_alone(student: nn.Module, loader: Any, held_out: Sequence[Sequence[int]], settings: TrainSettings, *,
                label: str, say: Callable[[str], None], reference: torch.Tensor | None = None,
                precision: str = "no") -> RunOutcome:
    """Train ``student`` on its own next-token loss; return the held-out curve and timings."""
    from distill_core import BasicTraining

    outcome = RunOutcome()
    trainer = BasicTraining(train_config=_train_config(settings, precision), model=student, adaptor=None)
    started = time.perf_counter()
    with trainer:
        trainer.train(_optimizer(student, settings), scheduler=linear_schedule(settings), dataloader=loader,
                      num_steps=settings.steps, max_grad_norm=settings.max_grad_norm,
                      callback=_held_out_callback(held_out, reference, outcome, say, label))
    outcome.seconds = time.perf_counter() - started
    return outcome
