"""Students built from the teacher: a smaller model of its own family, cut from its weights.

Depth by block influence (ShortGPT), width by activation importance (Minitron), or explicit rules::

    from distill_core.students import build_student, calibrate, plan_student

    scores = calibrate(teacher, batches)            # one forward pass per batch, hooks gather every score
    plan = plan_student(teacher, layers=15, scores=scores)               # which layers, heads, channels
    student = build_student(teacher, plan)          # an ordinary Hugging Face model of the teacher's class
    student.save_pretrained("student/")

See docs/students.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# lazy, so that `distill --help` (which imports students.command) does not import torch
_HOMES = {
    "StudentPlan": "build", "build_student": "build", "plan_student": "build",
    "ImportanceScores": "calibration", "calibrate": "calibration",
    "family_of": "families",
    "layer_table": "report", "plot_layer_scores": "report",
    "LAYER_METHODS": "selection", "first_last_layers": "selection", "select_heads": "selection",
    "select_layers": "selection",
}

__all__ = [
    "LAYER_METHODS",
    "ImportanceScores",
    "StudentPlan",
    "build_student",
    "calibrate",
    "family_of",
    "first_last_layers",
    "layer_table",
    "plan_student",
    "plot_layer_scores",
    "select_heads",
    "select_layers",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'distill_core.students' has no attribute {name!r}")
    return getattr(import_module(f"distill_core.students.{_HOMES[name]}"), name)
