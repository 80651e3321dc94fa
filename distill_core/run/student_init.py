"""``student.from_teacher``: a student cut from the teacher's weights by :mod:`distill_core.students`.

Before any weights load, :func:`planned_student_config` checks the section against the teacher's
``config.json`` (layer count and indices, widths, grouped-query attention, BERT's head size) and
returns the student's ``config.json`` as it will be, so every other check (intermediate matches,
vocabularies, the plan's parameter count) reads it as it reads a student folder's.

At run time :func:`student_from_teacher` calibrates the loaded teacher on the run's first training
examples (only when the rule ranks by scores), plans and builds the student, and writes it to
``training.output_dir/student_init/`` (``save_pretrained`` layout, the tokenizer,
``importance.json`` with the plan and scores, ``layers.txt`` with the layer table).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from distill_core.run.config import FromTeacherSection
from distill_core.run.files import Problem

#: the folder under ``training.output_dir`` that holds the student as built, before training
STUDENT_INIT = "student_init"
WHERE = "student.from_teacher"


def _kept_layers(section: FromTeacherSection, num_layers: int, problems: list[Problem]) -> int | None:
    """How many layers the student keeps, or None after reporting a problem."""
    if section.layers is None:
        return num_layers
    if isinstance(section.layers, int):
        if section.layers > num_layers:
            problems.append(
                Problem(
                    f"{WHERE}.layers",
                    f"keeps {section.layers} layers, but the teacher has {num_layers} (num_hidden_layers in its "
                    f"config.json)",
                )
            )
            return None
        return section.layers
    bad = False
    for position, index in enumerate(section.layers):
        if not 0 <= index < num_layers:
            problems.append(
                Problem(
                    f"{WHERE}.layers.{position}",
                    f"layer {index} is not a layer of the teacher, whose layers are 0..{num_layers - 1} "
                    f"(num_hidden_layers={num_layers} in its config.json)",
                )
            )
            bad = True
    if len(set(section.layers)) != len(section.layers):
        problems.append(Problem(f"{WHERE}.layers", f"lists a layer twice: {section.layers}"))
        bad = True
    return None if bad else len(section.layers)


def _width(name: str, value: int | None, full: int, problems: list[Problem]) -> int:
    if value is not None and value > full:
        problems.append(Problem(f"{WHERE}.{name}", f"{value} is more than the teacher's {full}"))
    return full if value is None else min(value, full)


def planned_student_config(
    section: FromTeacherSection, teacher_config: dict[str, Any], problems: list[Problem]
) -> dict[str, Any]:
    """Return the ``config.json`` of the student ``section`` cuts from the teacher; report what cannot be cut.

    ``{}`` when the teacher's config is unknown (a GGUF teacher: checked when it loads).
    """
    from distill_core.students.families import MODEL_TYPES, family_named

    if not teacher_config:
        return {}
    model_type = teacher_config.get("model_type")
    family = family_named(model_type)
    if family is None:
        problems.append(
            Problem(
                WHERE,
                f"a student cannot be cut from a {model_type!r} teacher (model_type in its config.json); "
                f"supported: {', '.join(MODEL_TYPES)}",
            )
        )
        return {}
    settings = SimpleNamespace(**teacher_config)
    try:
        num_layers, num_heads = int(teacher_config["num_hidden_layers"]), family.num_heads(settings)
        num_kv, head_dim = family.num_kv_heads(settings), family.head_dim(settings)
        full_mlp, full_hidden = int(teacher_config["intermediate_size"]), int(teacher_config["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(Problem(WHERE, f"the teacher's config.json lacks a size the student is cut by ({exc})"))
        return {}
    layers = _kept_layers(section, num_layers, problems)
    heads = _width("heads", section.heads, num_heads, problems)
    default_kv = num_kv if section.heads is None else max(1, heads * num_kv // num_heads)
    kv_heads = _width("kv_heads", section.kv_heads if section.kv_heads is not None else default_kv, num_kv, problems)
    intermediate = _width("intermediate", section.intermediate, full_mlp, problems)
    hidden = _width("hidden", section.hidden, full_hidden, problems)
    if heads % kv_heads:
        problems.append(
            Problem(
                f"{WHERE}.kv_heads",
                f"{heads} heads cannot be shared by {kv_heads} key/value heads: every key/value head serves the "
                f"same number of query heads",
            )
        )
    elif heads // kv_heads > num_heads // num_kv:
        problems.append(
            Problem(
                f"{WHERE}.heads",
                f"each of {kv_heads} key/value heads can serve at most {num_heads // num_kv} query heads (the "
                f"teacher's groups), so {heads} heads need more key/value heads",
            )
        )
    if family.head_size_from_hidden and heads * head_dim != hidden:
        problems.append(
            Problem(
                f"{WHERE}.hidden",
                f"a {model_type} model derives its head size from hidden_size / num_attention_heads, so heads x "
                f"{head_dim} (the teacher's head size) must equal the hidden size: {heads} heads need hidden "
                f"{heads * head_dim}",
            )
        )
    student = copy.deepcopy(teacher_config)
    student.update(
        num_hidden_layers=layers if layers is not None else num_layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_size=hidden,
    )
    if "num_key_value_heads" in teacher_config:
        student["num_key_value_heads"] = kv_heads
    if not family.head_size_from_hidden:
        student["head_dim"] = head_dim
    return student


def describe(section: FromTeacherSection) -> str:
    """The student's origin as the plan prints it."""
    if isinstance(section.layers, list):
        layers = f"layers {section.layers}"
    elif section.layers is None:
        layers = "every layer"
    else:
        layers = f"{section.layers} layers by {section.method}"
    widths = [
        f"{name} {value}"
        for name, value in (
            ("heads", section.heads),
            ("kv_heads", section.kv_heads),
            ("intermediate", section.intermediate),
            ("hidden", section.hidden),
        )
        if value is not None
    ]
    calibration = (
        f", calibrated on the first {section.calibration_examples} training examples"
        if section.needs_calibration
        else ""
    )
    return f"cut from the teacher: {layers}" + (f", {', '.join(widths)}" if widths else "") + calibration


def _on_device(loader: Any, device: Any) -> Iterator[dict[str, Any]]:
    for batch in loader:
        yield {key: value.to(device) for key, value in batch.items()}


def student_from_teacher(
    teacher: Any,
    section: FromTeacherSection,
    examples: list[dict[str, Any]],
    *,
    teacher_name: str,
    make_batches: Callable[[list[dict[str, Any]]], Any],
    device: Any,
    say: Callable[[str], None],
) -> tuple[Any, dict[str, Any]]:
    """Calibrate (when needed), plan and build the student; return it (float32) and its report.

    :param make_batches: turns examples into a loader of padded batches.
    :param device: where the teacher runs its calibration passes.
    """
    import torch

    from distill_core.students import build_student, calibrate, layer_table, plan_student

    scores = None
    if section.needs_calibration:
        calibration = examples[: section.calibration_examples]
        loader = make_batches(calibration)
        say(f"calibrating the teacher on {len(calibration)} training examples ({len(loader)} batches)")
        teacher.to(device)
        scores = calibrate(teacher, _on_device(loader, device), total=len(loader), progress=False)
    listed = isinstance(section.layers, list)
    plan = plan_student(
        teacher,
        layers=None if listed else section.layers,
        method=section.method,
        keep=section.layers if listed else None,
        heads=section.heads,
        kv_heads=section.kv_heads,
        intermediate=section.intermediate,
        hidden=section.hidden,
        scores=scores,
    )
    student = build_student(teacher, plan, teacher_name=teacher_name).to(dtype=torch.float32)
    report: dict[str, Any] = {
        "teacher": teacher_name,
        "parameters": sum(parameter.numel() for parameter in student.parameters()),
        "teacher_parameters": sum(parameter.numel() for parameter in teacher.parameters()),
        "plan": plan.summary(),
    }
    if scores is not None:
        report["calibration"] = {"examples": scores.samples, "tokens": scores.tokens, "batches": scores.batches}
        report["block_influence"] = [round(value, 6) for value in scores.block_influence]
        report["layer_table"] = layer_table(scores.block_influence, plan.layers)
        report["scores"] = scores.to_dict()
    say(
        f"built the student from the teacher: layers {plan.layers} ({plan.layer_method}), "
        f"{report['parameters']:,} parameters of the teacher's {report['teacher_parameters']:,}"
    )
    if "layer_table" in report:
        say(report["layer_table"])
    return student, report


def save_student_init(student: Any, tokenizer: Any, report: dict[str, Any], folder: Path) -> Path:
    """Write the built student, its tokenizer, ``importance.json`` and ``layers.txt`` to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "importance.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if "layer_table" in report:
        (folder / "layers.txt").write_text(report["layer_table"] + "\n", encoding="utf-8")
    return folder
