"""Teacher routing: which teachers a batch needs, which teacher each term reads, and how KD combines them.

One distillation class is composed with one routing:

- :class:`SingleTeacher`: one teacher (key 0) for every batch and term;
- :class:`WeightedEnsemble`: several teachers (keys 0, 1, ...); KD towards the weighted average of
  their logits; a match names its teacher with ``teacher`` (default 0);
- :class:`TaskTeachers`: one teacher per task (keys are task names); each batch's teacher is its
  task's, and the task's weight multiplies its loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from distill_core.errors import DistillError

if TYPE_CHECKING:
    from distill_core.step import TeacherOutput
    from distill_core.adaptors.logits import LogitsView
    from distill_core.terms.matches import BoundMatch

__all__ = ["SingleTeacher", "TaskTeachers", "TeacherRouting", "WeightedEnsemble", "finite_weight"]


def finite_weight(value: Any, field: str) -> float:
    """``value`` as a finite non-negative float (a loss weight), or a ValueError naming ``field``."""
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = math.nan
    if not (math.isfinite(weight) and weight >= 0):  # NaN passes `weight < 0`
        raise ValueError(f"{field} must be a finite non-negative number (it multiplies a loss), got {value!r}")
    return weight


class TeacherRouting:
    """Routes batches and terms to teachers; this base routes everything to the one teacher, key 0.

    :param teachers: the teacher modules by key.
    :param adaptors_T: the teachers' adaptors by key (None: automatic).
    :param adaptors_S: the student's adaptors by task (key None outside multi-task runs).
    """

    #: whether a step may leave some student parameters without gradient (DDP must then look for them)
    part_of_student_per_step = False

    def __init__(
        self,
        teachers: Mapping[Any, nn.Module],
        adaptors_T: Mapping[Any, Any],
        adaptors_S: Mapping[Any, Any],
    ) -> None:
        for key, teacher in teachers.items():
            if not isinstance(teacher, nn.Module):
                raise TypeError(f"teacher {key!r} must be a torch.nn.Module, got {type(teacher).__name__}")
        self.teachers = dict(teachers)
        self.adaptors_T = dict(adaptors_T)
        self.adaptors_S = dict(adaptors_S)

    def keys_for(self, task: str | None) -> list[Any]:
        """The teachers a batch of ``task`` needs."""
        return list(self.teachers)

    def match_teacher(self, spec: Any, task: str | None) -> Any:
        """The key of the teacher a match reads."""
        return spec.teacher if spec.teacher is not None else 0

    def check_match(self, bound: BoundMatch) -> None:
        """At setup: the teacher a match names must exist."""
        key = self.match_teacher(bound.spec, None)
        if key not in self.teachers:
            raise DistillError(f"{bound.label}: teacher {key!r} does not exist; teachers are {sorted(self.teachers)}")

    def kd_teachers(self, outputs: Mapping[Any, TeacherOutput], task: str | None) -> list[tuple[float, LogitsView]]:
        """(weight, logits) of each teacher whose logits make the KD target."""
        return [(1.0, next(iter(outputs.values())).logits)]

    def role_T(self, key: Any) -> str:
        """How errors name teacher ``key``'s adaptor."""
        return "adaptor_T" if key == 0 and len(self.teachers) == 1 else f"adaptor_T[{key!r}]"

    def role_S(self, task: str | None) -> str:
        """How errors name the student adaptor of ``task``."""
        return "adaptor_S" if task is None else f"adaptor_S[{task!r}]"

    def teacher_task(self, key: Any) -> str | None:
        """The task whose batches teacher ``key`` sees (multi-task runs), else None."""
        return None

    def student_key(self, task: str | None) -> Any:
        """The key of the student adaptor a batch of ``task`` uses."""
        return None

    def task_weight(self, task: str | None) -> float:
        """The weight multiplying a batch's loss."""
        return 1.0


class SingleTeacher(TeacherRouting):
    """One teacher, key 0."""

    def __init__(self, model_T: nn.Module, adaptor_T: Any, adaptor_S: Any) -> None:
        super().__init__({0: model_T}, {0: adaptor_T}, {None: adaptor_S})


class WeightedEnsemble(TeacherRouting):
    """Several teachers; KD towards the weighted average of their logits (weights normalised to sum 1)."""

    def __init__(
        self,
        model_T: Sequence[nn.Module],
        adaptor_T: Any,
        adaptor_S: Any,
        teacher_weights: Sequence[float] | None,
    ) -> None:
        if isinstance(model_T, nn.Module) or not isinstance(model_T, Sequence) or not model_T:
            raise TypeError("MultiTeacherDistillation needs model_T as a non-empty list of teachers")
        teachers = dict(enumerate(model_T))
        if isinstance(adaptor_T, Sequence):
            if len(adaptor_T) != len(model_T):
                raise ValueError(f"got {len(model_T)} teachers but {len(adaptor_T)} adaptors in adaptor_T")
            adaptors = dict(enumerate(adaptor_T))
        else:
            adaptors = {key: adaptor_T for key in teachers}
        weights = (
            [1.0] * len(teachers)
            if teacher_weights is None
            else [finite_weight(w, f"teacher_weights[{index}]") for index, w in enumerate(teacher_weights)]
        )
        if len(weights) != len(teachers) or sum(weights) <= 0:
            raise ValueError(
                f"teacher_weights must be {len(teachers)} finite non-negative numbers with a positive sum, "
                f"got {teacher_weights!r}"
            )
        super().__init__(teachers, adaptors, {None: adaptor_S})
        self.weights = [w / sum(weights) for w in weights]

    def kd_teachers(self, outputs: Mapping[Any, TeacherOutput], task: str | None) -> list[tuple[float, LogitsView]]:
        return [(weight, outputs[key].logits) for weight, key in zip(self.weights, self.teachers)]


class TaskTeachers(TeacherRouting):
    """One teacher per task: ``{task: teacher}``; each batch goes to its task's teacher."""

    # each step trains one task's head of the student: DDP must look for the unused parameters
    part_of_student_per_step = True

    def __init__(
        self,
        model_T: Mapping[str, nn.Module],
        adaptor_T: Mapping[str, Any],
        adaptor_S: Mapping[str, Any],
        task_weights: Mapping[str, float] | None,
    ) -> None:
        for name, value in (("model_T", model_T), ("adaptor_T", adaptor_T), ("adaptor_S", adaptor_S)):
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"MultiTaskDistillation needs {name} as a dict {{task: ...}}, got {type(value).__name__}"
                )
        tasks = set(model_T)
        for name, value in (("adaptor_T", adaptor_T), ("adaptor_S", adaptor_S)):
            if set(value) != tasks:
                raise ValueError(f"{name} has tasks {sorted(value)} but model_T has {sorted(tasks)}")
        self.weights = {task: 1.0 for task in tasks}
        if task_weights:
            unknown = set(task_weights) - tasks
            if unknown:
                raise ValueError(f"task_weights names unknown tasks {sorted(unknown)}; tasks are {sorted(tasks)}")
            self.weights.update({task: finite_weight(w, f"task_weights[{task!r}]") for task, w in task_weights.items()})
        super().__init__(model_T, adaptor_T, adaptor_S)

    def keys_for(self, task: str | None) -> list[Any]:
        return [task]

    def match_teacher(self, spec: Any, task: str | None) -> Any:
        return task  # each batch's teacher is its task's

    def check_match(self, bound: BoundMatch) -> None:
        if bound.spec.teacher is not None:
            raise DistillError(
                f"{bound.label}: in multi-task runs each batch's teacher is its task's; remove 'teacher'"
            )

    def role_T(self, key: Any) -> str:
        return f"adaptor_T[{key!r}]"

    def teacher_task(self, key: Any) -> str | None:
        return key

    def student_key(self, task: str | None) -> Any:
        return task

    def task_weight(self, task: str | None) -> float:
        return self.weights[task]
