"""Build a student from a teacher's weights: plan what it keeps, then slice every parameter.

The student is a fresh model of the teacher's own class, made from the teacher's config with the
kept sizes, whose ``state_dict`` is filled with the teacher's slices: layer ``j`` of the student is
teacher layer ``plan.layers[j]``, and within it only the kept heads, key/value groups, MLP channels
and hidden channels. So it saves, loads and generates as any Hugging Face model, and its config
records what it was made from (``config.distill_student``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from distill_core.students.calibration import ImportanceScores
from distill_core.students.families import Family, family_of
from distill_core.students.selection import select_heads, select_layers, top_indices

__all__ = ["StudentPlan", "build_student", "compact_ranges", "plan_student"]


@dataclass(frozen=True)
class StudentPlan:
    """What a student keeps of its teacher, every index the teacher's (0-based, ascending)."""

    layers: list[int]
    #: per kept layer: the query heads, the key/value groups and the MLP channels kept
    heads: list[list[int]]
    kv_heads: list[list[int]]
    mlp: list[list[int]]
    #: the hidden (embedding) channels kept, shared by every layer (they are the residual stream)
    hidden: list[int]
    layer_method: str
    width_ranked: bool

    def summary(self) -> dict[str, Any]:
        """Return the plan as a small JSON-ready dict (channel lists as ranges such as ``"0-5,9"``)."""
        return {"layer_method": self.layer_method, "layers": list(self.layers),
                "width": "activation importance" if self.width_ranked else "kept whole",
                "heads": [list(kept) for kept in self.heads], "kv_heads": [list(kept) for kept in self.kv_heads],
                "mlp": [compact_ranges(kept) for kept in self.mlp], "hidden": compact_ranges(self.hidden)}


def compact_ranges(indices: Sequence[int]) -> str:
    """Return ascending indices as runs: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(start) if start == end else f"{start}-{end}" for start, end in runs)


def _count(name: str, value: int | None, full: int) -> int:
    if value is None:
        return full
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= full:
        raise ValueError(f"Expected argument `{name}` to be between 1 and {full} (the teacher's) but got {value!r}")
    return value


def plan_student(teacher: nn.Module, *, layers: int | None = None, method: str = "block_influence",
                 keep: Sequence[int] | None = None, heads: int | None = None, kv_heads: int | None = None,
                 intermediate: int | None = None, hidden: int | None = None,
                 scores: ImportanceScores | None = None) -> StudentPlan:
    """Return what a student of ``teacher`` keeps.

    :param layers: how many layers to keep (None: all, unless ``keep`` lists them).
    :param method: the layer rule (:func:`distill_core.students.selection.select_layers`).
    :param keep: the layers of the ``explicit`` method.
    :param heads: query heads per layer; ``kv_heads`` key/value heads per layer (default: the
        teacher's ratio of query heads to key/value heads).
    :param intermediate: MLP channels per layer; ``hidden`` the hidden size.
    :param scores: calibrated importance, needed by ``block_influence`` and by any width pruning.
    """
    family = family_of(teacher)
    config = teacher.config
    num_layers = int(config.num_hidden_layers)
    if method == "explicit" or layers is not None:
        kept_layers = select_layers(num_layers, method=method, keep=layers, explicit=keep,
                                    block_influence=None if scores is None else scores.block_influence)
    else:
        kept_layers = list(range(num_layers))
    num_heads, num_kv = family.num_heads(config), family.num_kv_heads(config)
    keep_heads = _count("heads", heads, num_heads)
    default_kv = num_kv if heads is None else max(1, keep_heads * num_kv // num_heads)
    keep_kv = _count("kv_heads", kv_heads if kv_heads is not None else default_kv, num_kv)
    keep_mlp = _count("intermediate", intermediate, int(config.intermediate_size))
    keep_hidden = _count("hidden", hidden, int(config.hidden_size))
    width_pruned = (keep_heads, keep_kv, keep_mlp, keep_hidden) != (num_heads, num_kv,
                                                                   int(config.intermediate_size),
                                                                   int(config.hidden_size))
    if width_pruned and scores is None:
        raise ValueError("width pruning (heads, kv_heads, intermediate, hidden) ranks by activation importance: "
                         "pass the scores of `calibrate(teacher, batches)`")
    if family.head_size_from_hidden:
        _check_bert_widths(family, config, keep_heads, keep_hidden)
    if scores is None:
        plan_heads = [list(range(num_heads)) for _ in kept_layers]
        plan_kv = [list(range(num_kv)) for _ in kept_layers]
        plan_mlp = [list(range(keep_mlp)) for _ in kept_layers]
        plan_hidden = list(range(keep_hidden))
    else:
        chosen = [select_heads(scores.heads[index], num_kv_heads=num_kv, keep_heads=keep_heads,
                               keep_kv_heads=keep_kv) for index in kept_layers]
        plan_heads = [kept for kept, _ in chosen]
        plan_kv = [groups for _, groups in chosen]
        plan_mlp = [top_indices(scores.mlp[index], keep_mlp) for index in kept_layers]
        plan_hidden = top_indices(scores.hidden, keep_hidden)
    return StudentPlan(kept_layers, plan_heads, plan_kv, plan_mlp, plan_hidden,
                       layer_method=method if kept_layers != list(range(num_layers)) or layers else "all",
                       width_ranked=width_pruned)


def _check_bert_widths(family: Family, config: Any, keep_heads: int, keep_hidden: int) -> None:
    head_dim = family.head_dim(config)
    if keep_heads * head_dim != keep_hidden:
        raise ValueError(
            f"a {config.model_type} model derives its head size from hidden_size / num_attention_heads, so the "
            f"student's heads x {head_dim} (the teacher's head size) must equal its hidden size: {keep_heads} heads "
            f"need hidden {keep_heads * head_dim}, or hidden {keep_hidden} needs {keep_hidden / head_dim:g} heads")


def _rows(units: Sequence[int], size: int) -> list[int]:
    return [unit * size + offset for unit in units for offset in range(size)]


def _student_config(teacher: nn.Module, family: Family, plan: StudentPlan, teacher_name: str) -> Any:
    teacher_config = teacher.config
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = len(plan.layers)
    config.num_attention_heads = len(plan.heads[0])
    config.intermediate_size = len(plan.mlp[0])
    config.hidden_size = len(plan.hidden)
    if not family.head_size_from_hidden:  # the head size stays the teacher's whatever the hidden size
        config.head_dim = family.head_dim(teacher_config)
    if hasattr(teacher_config, "num_key_value_heads"):
        config.num_key_value_heads = len(plan.kv_heads[0])
    if getattr(teacher_config, "layer_types", None):
        config.layer_types = [teacher_config.layer_types[index] for index in plan.layers]
    fields = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
              "hidden_size", "head_dim")
    config.distill_student = {
        "teacher": teacher_name, "teacher_class": type(teacher).__name__,
        "teacher_config": {name: getattr(teacher_config, name) for name in fields
                           if getattr(teacher_config, name, None) is not None},
        **plan.summary()}
    return config


def _slice(tensor: torch.Tensor, axes: Sequence[str | None], indices: dict[str, list[int]]) -> torch.Tensor:
    for dim, axis in enumerate(axes):
        if axis is not None:
            tensor = tensor.index_select(dim, torch.tensor(indices[axis], dtype=torch.long, device=tensor.device))
    return tensor


def build_student(teacher: nn.Module, plan: StudentPlan, *, teacher_name: str | None = None) -> nn.Module:
    """Return a new model of the teacher's class holding the slices of its weights that ``plan`` keeps.

    :param teacher_name: what ``config.distill_student["teacher"]`` records (default: the teacher's
        ``name_or_path``).
    """
    family = family_of(teacher)
    if not plan.layers:
        raise ValueError("a student keeps at least one layer")
    for name, kept in (("heads", plan.heads), ("kv_heads", plan.kv_heads), ("mlp", plan.mlp)):
        if len(kept) != len(plan.layers) or len({len(item) for item in kept}) != 1:
            raise ValueError(f"the plan's {name} must list one equally sized set per kept layer")
    name = teacher_name or getattr(teacher.config, "name_or_path", "") or type(teacher).__name__
    config = _student_config(teacher, family, plan, name)
    head_dim = family.head_dim(teacher.config)
    student = type(teacher)(config).to(dtype=next(teacher.parameters()).dtype)
    teacher_state = teacher.state_dict()
    sliced = {}
    for key, target in student.state_dict().items():
        match = re.match(family.layer_prefix, key)
        if match:
            position = int(match.group(1))
            layer = plan.layers[position]
            source = key[:match.start(1)] + str(layer) + key[match.end(1):]
            rest = key[match.end():]
            indices = {"hidden": plan.hidden, "q": _rows(plan.heads[position], head_dim),
                       "kv": _rows(plan.kv_heads[position], head_dim), "mlp": plan.mlp[position]}
        else:
            source, rest, indices = key, key, {"hidden": plan.hidden}
        axes = family.axes_of(rest)
        value = teacher_state[source]
        if axes is not None:
            value = _slice(value, axes, indices)
        if value.shape != target.shape:
            raise ValueError(f"cannot fill the student's {key} {tuple(target.shape)} from the teacher's {source} "
                             f"{tuple(teacher_state[source].shape)}: no {family.name} rule covers it")
        sliced[key] = value.clone()
    student.load_state_dict(sliced, strict=True)
    if getattr(teacher, "generation_config", None) is not None and hasattr(student, "generation_config"):
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.train(teacher.training)


def plan_dict(plan: StudentPlan) -> dict[str, Any]:
    """Return every field of the plan (full index lists), for JSON reports."""
    return asdict(plan)
