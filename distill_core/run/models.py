"""Loading the run's models: the teacher for forward passes, the student to train (whole or LoRA).

Causal LMs load with ``AutoModelForCausalLM``, classifiers with ``AutoModelForSequenceClassification``;
a classification student is given the run's label names (a new head when its folder has none).

A ``student.lora`` section wraps the student with peft, so only the adapter's weights train.
"""

from __future__ import annotations

from typing import Any

from distill_core.run.checks import CheckedRun


def with_lora(student: Any, checked: CheckedRun) -> Any:
    """Wrap ``student`` in a peft LoRA adapter as ``student.lora`` says; its base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    lora = checked.config.student.lora
    assert lora is not None
    settings = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="SEQ_CLS" if checked.classifies else "CAUSAL_LM",  # SEQ_CLS trains the new head too
    )
    return get_peft_model(student, settings)


def _options(checked: CheckedRun) -> dict[str, Any]:
    if any(match.feature == "attention" for match in checked.config.distillation.intermediate_matches):
        return {"attn_implementation": "eager"}  # the fused kernels return no attention maps
    return {}


def _auto_class(checked: CheckedRun) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if checked.classifies else AutoModelForCausalLM


def load_teacher(checked: CheckedRun) -> Any:
    """Load the teacher, frozen and in eval mode, in ``teacher.dtype``."""
    import torch

    config = checked.config
    teacher_options = dict(_options(checked), dtype=getattr(torch, config.teacher.dtype))
    if config.teacher.gguf_file:
        teacher_options["gguf_file"] = config.teacher.gguf_file
    teacher = _auto_class(checked).from_pretrained(config.teacher.path, **teacher_options).eval()
    teacher.requires_grad_(False)
    return teacher


def load_student(checked: CheckedRun, folder: str) -> Any:
    """Load the student in ``folder`` in float32 (a classifier with the run's classes), not yet LoRA-wrapped."""
    import torch

    student_options = dict(_options(checked), dtype=torch.float32)
    if checked.classifies:  # a student without a head gets a new one, with the run's classes
        names = checked.label_names
        student_options.update(
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: index for index, name in enumerate(names)},
        )
    return _auto_class(checked).from_pretrained(folder, **student_options)


def load_models(checked: CheckedRun) -> tuple[Any, Any]:
    """Load the teacher (frozen, in ``teacher.dtype``) and the student (float32, LoRA-wrapped if asked)."""
    teacher = load_teacher(checked)
    student = load_student(checked, checked.config.student.path)
    if checked.config.student.lora is not None:
        student = with_lora(student, checked)
    return teacher, student
