"""The classification demo's students, cut from the fine-tuned teacher by one of three rules.

- ``layers``: a copy of the teacher's layers ``student_init_layers(num_teacher, num_student)``
  (the last layer of each of equal blocks: MiniLM-L6 -> 2 gives layers 2 and 5), every other part
  whole (:func:`distill_core.demo.models.make_student`).
- ``block_influence``: the teacher's ``num_student`` layers of highest block influence, measured on
  a few batches of the training text (:mod:`distill_core.students`, ShortGPT's rule).
- ``width`` (the demo's default): a student of about the same size without embeddings that keeps
  one layer more, by the uniform rule, and prunes each one's MLP by activation importance
  (Minitron): see :func:`width_shape`.

Whatever the rule, the student's hidden states are matched to the teacher's by the uniform mapping
(:func:`hidden_matches`), with a linear projection where the student is narrower.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distill_core.layer_mapping import student_init_layers, uniform_layer_mapping

if TYPE_CHECKING:  # the demo's command line imports this module for its choices: no torch at that point
    import torch
    from torch import nn

__all__ = [
    "STUDENT_BUILDERS", "StudentShape", "builder_shape", "calibrate_teacher", "calibration_batches", "cut_student",
    "hidden_matches", "importance_for", "needs_calibration", "width_shape",
]

STUDENT_BUILDERS: tuple[str, ...] = ("layers", "block_influence", "width")


@dataclass(frozen=True)
class StudentShape:
    """What a student keeps: how many layers chosen by which rule, and (None: the teacher's) its widths."""

    layers: int
    method: str = "uniform"
    heads: int | None = None
    hidden: int | None = None
    intermediate: int | None = None

    def kept_layers(self, teacher_config: Any) -> list[int]:
        """Return the teacher layers of the ``uniform`` rule (the others are known once calibrated)."""
        return student_init_layers(int(teacher_config.num_hidden_layers), self.layers)

    def describe(self, teacher_config: Any) -> str:
        parts = [f"{self.layers} layers ({self.method})"]
        for name, value, full in (("heads", self.heads, teacher_config.num_attention_heads),
                                  ("hidden", self.hidden, teacher_config.hidden_size),
                                  ("MLP", self.intermediate, teacher_config.intermediate_size)):
            if value is not None and value != full:
                parts.append(f"{name} {value}/{full}")
        return ", ".join(parts)


def width_shape(teacher_config: Any, num_student_layers: int) -> StudentShape:
    """Return the ``width`` student matching a ``num_student_layers``-layer copy in parameters without embeddings.

    It keeps one layer more (the uniform rule's, ``student_init_layers``), the teacher's heads and
    hidden size, and prunes every layer's MLP to the channels of highest activation importance (a
    multiple of 64) that bring its parameters nearest the copy's: for MiniLM-L6 and 2 layers,
    teacher layers 1, 3 and 5 with 768 of 1,536 MLP channels. (Choosing the 3 layers by block
    influence instead measured 2.5 points lower: docs/students.md.) A BERT student
    keeps ``heads x head size == hidden``, so pruning heads would shrink the hidden size, the
    embeddings and the classifier too; the MLP is the width that leaves them alone.
    """
    hidden, full_mlp = int(teacher_config.hidden_size), int(teacher_config.intermediate_size)
    layers = min(num_student_layers + 1, int(teacher_config.num_hidden_layers))
    attention = 4 * hidden * hidden + 4 * hidden + 4 * hidden  # q, k, v, output projections and two LayerNorms
    per_channel = 2 * hidden + 1  # a column of the up projection, its bias, a row of the down projection
    target = num_student_layers * (attention + per_channel * full_mlp + hidden)
    channels = (target / layers - attention - hidden) / per_channel
    intermediate = max(64, min(full_mlp, int(round(channels / 64)) * 64))
    return StudentShape(layers=layers, method="uniform", intermediate=intermediate)


def builder_shape(builder: str, teacher_config: Any, num_student_layers: int) -> StudentShape:
    """Return the shape of the demo's ``--student-builder`` for a ``num_student_layers``-layer student."""
    if builder == "layers":
        return StudentShape(layers=num_student_layers, method="uniform")
    if builder == "block_influence":
        return StudentShape(layers=num_student_layers, method="block_influence")
    if builder == "width":
        return width_shape(teacher_config, num_student_layers)
    raise ValueError(f"Expected a student builder among {', '.join(STUDENT_BUILDERS)} but got {builder!r}")


def needs_calibration(shape: StudentShape, teacher_config: Any) -> bool:
    pruned = any(value is not None and value != full for value, full in (
        (shape.heads, teacher_config.num_attention_heads), (shape.hidden, teacher_config.hidden_size),
        (shape.intermediate, teacher_config.intermediate_size)))
    return shape.method == "block_influence" or pruned


def calibration_batches(dataset: Any, *, batches: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Return the first ``batches`` batches of ``dataset`` (an ``EncodedDataset``), in order, labels dropped."""
    from distill_core.demo.batches import pad_batch

    size = min(len(dataset), batches * batch_size)
    examples = [{"input_ids": dataset.input_ids[index]} for index in range(size)]
    return [pad_batch(examples[start:start + batch_size]) for start in range(0, size, batch_size)]


def cut_student(teacher: nn.Module, shape: StudentShape, *, scores: Any = None) -> nn.Module:
    """Return the student of ``shape`` cut from ``teacher``.

    The ``uniform`` rule with the teacher's widths is today's copy
    (:func:`distill_core.demo.models.make_student`); anything else goes through
    :func:`distill_core.students.build_student`, which needs the calibrated ``scores`` for block
    influence and for any width pruning.
    """
    from distill_core.demo.models import make_student

    config = teacher.config
    if not needs_calibration(shape, config) and shape.method == "uniform":
        return make_student(teacher, student_init_layers(int(config.num_hidden_layers), shape.layers))
    from distill_core.students import build_student, plan_student

    plan = plan_student(teacher, layers=shape.layers, method=shape.method, heads=shape.heads, hidden=shape.hidden,
                        intermediate=shape.intermediate, scores=scores)
    student = build_student(teacher, plan, teacher_name="MiniLM-L6 (fine-tuned)")
    student.config.output_hidden_states = bool(getattr(config, "output_hidden_states", False))
    return student


def calibrate_teacher(teacher: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *,
                      progress: bool = False) -> Any:
    """Return the teacher's importance scores on ``batches`` (block influence, heads, channels)."""
    from distill_core.students import calibrate

    batches = list(batches)
    return calibrate(teacher, batches, total=len(batches), progress=progress,
                     description="calibrating the teacher")


def importance_for(teacher: nn.Module, shape: StudentShape, dataset: Any, *, batches: int, batch_size: int,
                   progress: bool = False) -> Any:
    """Return the teacher's scores on ``batches`` batches of ``dataset`` if ``shape`` needs them, or None."""
    if not needs_calibration(shape, teacher.config):
        return None
    return calibrate_teacher(teacher, calibration_batches(dataset, batches=batches, batch_size=batch_size),
                             progress=progress)


def hidden_matches(teacher_config: Any, student_config: Any, *, weight: float) -> list[dict[str, Any]]:
    """Return the uniform hidden-state matches (embeddings excluded) of a student, projected if it is narrower."""
    if weight <= 0:
        return []
    student_width, teacher_width = int(student_config.hidden_size), int(teacher_config.hidden_size)
    proj = None if student_width == teacher_width else ["linear", student_width, teacher_width]
    return uniform_layer_mapping(int(teacher_config.num_hidden_layers), int(student_config.num_hidden_layers),
                                 weight=weight, include_embeddings=False, proj=proj)
