"""Loading the run's models: the teacher for forward passes, the student to train (whole or LoRA).

The task decides the transformers class (``AutoModelForCausalLM`` or
``AutoModelForSequenceClassification``); a ``student.lora`` section wraps the student with peft, so
only the adapter's weights (and, for classification, the new head) train.
"""

from __future__ import annotations

from typing import Any

from distill_core.run.checks import CheckedRun

#: peft's task type for each run task
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}


def model_class(task: str) -> Any:
    """The transformers auto class that loads a model of ``task``."""
    import transformers

    if task == "sequence_classification":
        return transformers.AutoModelForSequenceClassification
    return transformers.AutoModelForCausalLM


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
        task_type=PEFT_TASK_TYPES[checked.task],
    )
    return get_peft_model(student, settings)


def load_models(checked: CheckedRun, *, label_options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Load the teacher (frozen, in ``teacher.dtype``) and the student (float32, LoRA-wrapped if asked).

    ``label_options`` (``num_labels``, ``id2label``, ``label2id``) go to the student of a
    classification run, so its head has one output per label of the data.
    """
    import torch

    config = checked.config
    auto_class = model_class(checked.task)
    options: dict[str, Any] = {}
    if any(match.feature == "attention" for match in config.distillation.intermediate_matches):
        options["attn_implementation"] = "eager"  # the fused kernels return no attention maps
    teacher_options = dict(options, dtype=getattr(torch, config.teacher.dtype))
    if config.teacher.gguf_file:
        teacher_options["gguf_file"] = config.teacher.gguf_file
    teacher = auto_class.from_pretrained(config.teacher.path, **teacher_options).eval()
    teacher.requires_grad_(False)
    student_options = dict(options, **(label_options or {}))
    if label_options:
        student_options["ignore_mismatched_sizes"] = True  # a head for the data's labels, newly initialised
    student = auto_class.from_pretrained(config.student.path, dtype=torch.float32, **student_options)
    if config.student.lora is not None:
        student = with_lora(student, checked)
    return teacher, student
