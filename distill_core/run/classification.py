"""Sequence classification in the run file: the task, the labels, the examples and the scores.

- The task is ``sequence_classification`` when the run says so (``task:``) or the teacher's
  ``config.json`` names a ``*ForSequenceClassification`` architecture.
- Label names map to ids by the teacher's ``id2label`` when it has one of its own (transformers
  writes ``LABEL_0``, ``LABEL_1``... for a model trained without names: those do not count), else
  by the sorted names found in the data. The exported student's ``id2label``/``label2id`` are these.
- An example is ``{"input_ids": [...], "labels": class_id}``; a batch's ``labels`` has shape (B,),
  as ``*ForSequenceClassification`` models take it.
- The evaluation scores accuracy and macro-F1 (the mean over classes of
  ``2 * precision * recall / (precision + recall)``, 0 for a class never predicted nor present).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from distill_core.run.config import DataSection

#: the names transformers gives labels when a model was saved without any
_PLACEHOLDER = re.compile(r"LABEL_\d+")


def task_of(declared: str | None, teacher_config: Mapping[str, Any]) -> str:
    """The run's task: the declared one, else ``sequence_classification`` for a classifier teacher."""
    if declared is not None:
        return declared
    architectures = teacher_config.get("architectures") or []
    if any(str(name).endswith("ForSequenceClassification") for name in architectures):
        return "sequence_classification"
    return "causal_lm"


def named_labels(model_config: Mapping[str, Any]) -> list[str] | None:
    """The label names of a ``config.json`` in id order, or None when it has none of its own."""
    id2label = model_config.get("id2label")
    if not isinstance(id2label, Mapping) or not id2label:
        return None
    try:
        ordered = [str(id2label[key]) for key in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return None
    if all(_PLACEHOLDER.fullmatch(name) for name in ordered):
        return None
    return ordered


def num_labels_of(model_config: Mapping[str, Any]) -> int | None:
    """How many classes a ``config.json`` declares (``num_labels`` or the size of ``id2label``), or None."""
    if isinstance(model_config.get("num_labels"), int):
        return int(model_config["num_labels"])
    id2label = model_config.get("id2label")
    return len(id2label) if isinstance(id2label, Mapping) and id2label else None


def label_names(records: Iterable[Mapping[str, Any]], column: str, teacher_config: Mapping[str, Any]) -> list[str]:
    """The run's label names in id order: the teacher's own ``id2label``, else the sorted names in the data."""
    return named_labels(teacher_config) or sorted({str(record[column]) for record in records if column in record})


def build_classification_examples(
    tokenizer: Any, records: Sequence[Mapping[str, Any]], section: DataSection, names: Sequence[str]
) -> list[dict[str, Any]]:
    """Tokenise ``text_label`` records (cut to ``max_length``) with their class ids.

    :raises ValueError: for a label that is not one of ``names``, naming the example.
    """
    ids = {name: index for index, name in enumerate(names)}
    examples = []
    for number, record in enumerate(records, start=1):
        label = str(record[section.label_column])
        if label not in ids:
            raise ValueError(f"example {number} has label {label!r}, which is not one of the labels {list(names)}")
        input_ids = list(
            tokenizer(str(record[section.text_column]), truncation=True, max_length=section.max_length)["input_ids"]
        )
        examples.append({"input_ids": input_ids, "labels": ids[label]})
    return examples


class ClassificationCollator:
    """Right-pad examples into ``input_ids`` and ``attention_mask``; ``labels`` (B,) holds the class ids."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            size = len(example["input_ids"])
            input_ids[row, :size] = torch.tensor(example["input_ids"])
            attention_mask[row, :size] = 1
        labels = torch.tensor([int(example["labels"]) for example in examples], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def accuracy_and_macro_f1(predicted: torch.Tensor, targets: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 of class ids ``predicted`` against ``targets`` (both (N,)).

    >>> accuracy_and_macro_f1(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2)
    {'accuracy': 0.6666666666666666, 'macro_f1': 0.6666666666666666}
    """
    scores = []
    for label in range(num_labels):
        true_positive = int(((predicted == label) & (targets == label)).sum())
        predicted_count, actual_count = int((predicted == label).sum()), int((targets == label).sum())
        denominator = predicted_count + actual_count
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    accuracy = float((predicted == targets).float().mean()) if targets.numel() else 0.0
    return {"accuracy": accuracy, "macro_f1": sum(scores) / max(1, num_labels)}


@torch.no_grad()
def evaluate_classification(
    student: nn.Module,
    teacher: nn.Module | None,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    label_names: Sequence[str],
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Return ``{"examples", "student": {"accuracy", "macro_f1"}, "teacher": {...}, "agreement"}``.

    ``agreement``: the fraction of examples where the student predicts the teacher's class.
    """
    was_training = student.training
    student.eval()
    predictions: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    targets = []
    try:
        for batch in batches:
            batch = {key: value.to(device) for key, value in batch.items()}
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            predictions["student"].append(student(**inputs).logits.argmax(-1).cpu())
            if teacher is not None:
                predictions["teacher"].append(teacher(**inputs).logits.argmax(-1).cpu())
            targets.append(batch["labels"].cpu())
    finally:
        student.train(was_training)
    if not targets:
        return {"examples": 0}
    target = torch.cat(targets)
    results: dict[str, Any] = {"examples": int(target.numel())}
    for role, found in predictions.items():
        if found:
            results[role] = accuracy_and_macro_f1(torch.cat(found), target, len(label_names))
    if predictions["teacher"]:
        student_classes, teacher_classes = torch.cat(predictions["student"]), torch.cat(predictions["teacher"])
        results["agreement"] = float((student_classes == teacher_classes).float().mean())
    return results


def format_classification(results: Mapping[str, Any]) -> str:
    """One line per model, as the command prints them."""
    if not results.get("examples"):
        return "evaluation: no held-out examples"
    lines = [f"evaluation on {results['examples']:,} held-out examples:"]
    for role in ("student", "teacher"):
        if role in results:
            lines.append(
                f"  {role}: accuracy {results[role]['accuracy']:.1%}, macro-F1 {results[role]['macro_f1']:.4f}"
            )
    if "agreement" in results:
        lines.append(f"  agreement with the teacher: {results['agreement']:.1%}")
    return "\n".join(lines)
