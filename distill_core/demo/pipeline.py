"""The demo's three trainings, written against distill's public API.

- :func:`fine_tune` trains a model on labelled batches with :class:`~distill_core.BasicTraining`
  (the teacher, and the student trained alone).
- :func:`distil` trains a student from a teacher with :class:`~distill_core.Distillation`: KD on
  the logits plus hidden-state matches.

Both evaluate on the dev set every ``eval_every`` steps (the callback) and return the accuracy curve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_core.demo.measure import accuracy
from distill_core.demo.models import trainable_parameters


def classification_adaptor(batch: Mapping[str, torch.Tensor], model_outputs: Any) -> dict[str, Any]:
    """Map a transformers sequence-classification output to distill's adaptor dict.

    ``losses`` is present only when the batch had labels (unlabelled transfer batches have none).
    """
    results: dict[str, Any] = {"logits": model_outputs.logits, "inputs_mask": batch["attention_mask"]}
    if model_outputs.hidden_states is not None:
        results["hidden"] = model_outputs.hidden_states
    if model_outputs.loss is not None:
        results["losses"] = [model_outputs.loss]
    return results


@dataclass(frozen=True)
class TrainSettings:
    """How long and how fast to train, where to log, and how often to evaluate."""

    steps: int
    learning_rate: float
    output_dir: Path
    log_dir: Path
    eval_every: int
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    progress_bar: bool = True


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable_parameters(model), lr=settings.learning_rate,
                             weight_decay=settings.weight_decay)


def linear_schedule(settings: TrainSettings) -> Callable[[torch.optim.Optimizer], Any]:
    """Linear warm-up then linear decay to 0, built by distill after it adds projection groups."""
    steps, warmup = settings.steps, max(1, int(settings.warmup_fraction * settings.steps))

    def factor(step: int) -> float:
        return min((step + 1) / warmup, max(0.0, (steps - step) / (steps - warmup if steps > warmup else 1)))

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train_config(settings: TrainSettings) -> Any:
    from distill_core import TrainingConfig

    # evaluate every eval_every steps, but write one checkpoint only, at the end: a checkpoint of a
    # MiniLM-sized student is hundreds of MB, and the demo needs none to resume from
    return TrainingConfig(output_dir=str(settings.output_dir), log_dir=str(settings.log_dir), device="cpu",
                          log_steps=max(1, min(10, settings.eval_every)), progress_bar=settings.progress_bar,
                          ckpt_steps=settings.steps, eval_steps=settings.eval_every, keep_last=1,
                          overwrite_output_dir=True)  # a demo run starts over: it never resumes an earlier one


def _dev_callback(dev_loader: Iterable[Any], curve: list[tuple[int, float]],
                  progress: bool) -> Callable[..., float]:
    def evaluate(model: nn.Module, step: int) -> float:
        # the training bar stands still while the dev set is evaluated: show that evaluation's own bar
        value = accuracy(model, dev_loader, progress=f"dev accuracy at step {step}" if progress else None)
        curve.append((step, value))
        return value  # distill logs it as eval/metric and keeps the best student

    return evaluate


def fine_tune(model: nn.Module, train_loader: Iterable[Any], dev_loader: Iterable[Any],
              settings: TrainSettings) -> list[tuple[int, float]]:
    """Train ``model`` on its labels; return the dev accuracy curve ``[(step, accuracy), ...]``."""
    from distill_core import BasicTraining

    curve: list[tuple[int, float]] = []
    trainer = BasicTraining(train_config=_train_config(settings), model=model, adaptor=classification_adaptor)
    with trainer:
        trainer.train(_optimizer(model, settings), scheduler=linear_schedule(settings), dataloader=train_loader,
                      num_steps=settings.steps, callback=_dev_callback(dev_loader, curve, settings.progress_bar),
                      max_grad_norm=settings.max_grad_norm)
    return curve


def distil(teacher: nn.Module, student: nn.Module, train_loader: Iterable[Any], dev_loader: Iterable[Any],
           settings: TrainSettings, distill_config: Any) -> list[tuple[int, float]]:
    """Distil ``teacher`` into ``student``; return the student's dev accuracy curve."""
    from distill_core import Distillation

    curve: list[tuple[int, float]] = []
    distiller = Distillation(train_config=_train_config(settings), distill_config=distill_config,
                             model_T=teacher, model_S=student,
                             adaptor_T=classification_adaptor, adaptor_S=classification_adaptor)
    with distiller:
        distiller.train(_optimizer(student, settings), scheduler=linear_schedule(settings), dataloader=train_loader,
                        num_steps=settings.steps, callback=_dev_callback(dev_loader, curve, settings.progress_bar),
                        max_grad_norm=settings.max_grad_norm, output_hidden_states=True)
    return curve
