"""The plan ``distill train --dry-run`` prints: models, data, steps, KD path and outputs.

Parameter counts are estimated from ``config.json`` (a Llama-style decoder: attention with grouped
key/value heads, a gated MLP, RMS norms; or a BERT classifier), so the plan costs no weight loading.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_core.run.checks import CheckedRun
from distill_core.run.student_init import describe


def _bert_parameters(settings: dict[str, Any]) -> int:
    """Parameters of a BERT encoder with its pooler and a classification head (``num_labels`` classes)."""
    width, layers, inner = (
        int(settings["hidden_size"]),
        int(settings["num_hidden_layers"]),
        int(settings["intermediate_size"]),
    )
    embeddings = (
        int(settings["vocab_size"])
        + int(settings.get("max_position_embeddings", 512))
        + int(settings.get("type_vocab_size", 2))
    ) * width + 2 * width
    block = 4 * (width * width + width) + 2 * width * inner + inner + width + 4 * width
    labels = len(settings.get("id2label") or {}) or 2
    return embeddings + layers * block + width * width + width + labels * (width + 1)


def estimate_parameters(settings: dict[str, Any]) -> int | None:
    """Parameters of a Llama-style causal LM (or a BERT classifier) described by ``settings`` (config.json).

    None when the config says too little.
    """
    if settings.get("model_type") == "bert":
        try:
            return _bert_parameters(settings)
        except (KeyError, TypeError, ValueError):
            return None
    try:
        width, layers = int(settings["hidden_size"]), int(settings["num_hidden_layers"])
        vocab, inner = int(settings["vocab_size"]), int(settings["intermediate_size"])
        heads = int(settings["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(settings.get("num_key_value_heads") or heads)
    head_dim = int(settings.get("head_dim") or width // heads)
    attention = 2 * width * heads * head_dim + 2 * width * kv_heads * head_dim
    block = attention + 3 * width * inner + 2 * width
    head = 0 if settings.get("tie_word_embeddings", True) else vocab * width
    return vocab * width + layers * block + width + head


@dataclass
class Plan:
    """What a run will do, worked out from the checked run and the tokenised examples."""

    teacher_parameters: int | None
    student_parameters: int | None
    train_examples: int
    train_tokens: int
    counted_tokens: int
    eval_examples: int
    steps: int
    effective_batch: int
    kd_path: str
    output_dir: str
    export_dir: str
    processes: int = 1  # torchrun's WORLD_SIZE

    def lines(self, checked: CheckedRun) -> list[str]:
        """The plan as the lines ``--dry-run`` prints."""
        config = checked.config

        def count(value: int | None) -> str:
            return "unknown (no Llama-style config.json)" if value is None else f"~{value / 1e6:,.1f}M parameters"

        source = (
            f"{config.teacher.path}/{config.teacher.gguf_file}" if config.teacher.gguf_file else config.teacher.path
        )
        built = config.student.from_teacher
        student = config.student.path if built is None else describe(built)
        return [
            f"teacher: {source} ({count(self.teacher_parameters)}, {config.teacher.dtype})",
            f"student: {student} ({count(self.student_parameters)}, float32)",
            f"tokenizer: {checked.tokenizer_path}",
            f"data: {self.train_examples} training examples ({config.data.format}"
            f"{', packed' if config.data.packing else ''}, max_length {config.data.max_length}), "
            f"{self.train_tokens:,} tokens, "
            + (
                f"{len(checked.label_names)} classes {checked.label_names}"
                if checked.classifies
                else f"{self.counted_tokens:,} with a label"
            ),
            f"held out: {self.eval_examples} examples"
            + ("" if self.eval_examples else " (no evaluation)")
            + _best(config),
            f"steps: {self.steps} (effective batch {self.effective_batch} = batch_size "
            f"{config.optimization.batch_size} x gradient_accumulation_steps "
            f"{config.training.gradient_accumulation_steps}"
            + (f" x {self.processes} processes)" if self.processes > 1 else ")"),
            f"KD: {config.distillation.kd_loss_type} at temperature {config.distillation.temperature:g}, "
            f"hard_label_weight {config.distillation.hard_label_weight:g}; {self.kd_path}",
            f"outputs: checkpoints and logs in {self.output_dir}; the student in {self.export_dir}",
        ]


def _best(config: Any) -> str:
    """What the plan says of ``eval.metric`` and ``export.which``."""
    from distill_core.run.best import export_which
    from distill_core.run.config import EVAL_METRICS

    metric = config.eval.metric
    if metric is None:
        return ""
    better = "lower" if EVAL_METRICS[metric] == "min" else "higher"
    when = f"every {config.training.eval_steps} steps" if config.training.eval_steps else "at each checkpoint"
    return f"; {metric} evaluated {when} ({better} is better), the {export_which(config)} student exported"


def kd_path(config: Any) -> str:
    """Which KD computation the distiller will take for two causal LMs with automatic adaptors."""
    distillation = config.distillation
    needs_full = distillation.temperature_schedule()[0] not in ("none", "constant") or distillation.probability_shift
    if distillation.chunked_token_kd is False or (distillation.chunked_token_kd is None and needs_full):
        return "full logits (B, L, V)"
    return "chunked from hidden states x output head"


def _counted(labels: list[int] | int) -> int:
    """Tokens with a label; a classification example (one class id) counts once."""
    return 1 if isinstance(labels, int) else sum(label != -100 for label in labels)


def make_plan(checked: CheckedRun, train_examples: list[dict[str, list[int]]], eval_count: int) -> Plan:
    """Work out the plan of a checked run whose training examples are tokenised."""
    config = checked.config
    # under torchrun each rank reads its share (a DistributedSampler pads the shares to equal sizes)
    world_size = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    share = math.ceil(len(train_examples) / world_size)
    batches = math.ceil(share / config.optimization.batch_size)
    accumulation = config.training.gradient_accumulation_steps
    if config.optimization.num_steps is not None:
        steps = config.optimization.num_steps
    else:
        steps = (config.optimization.num_epochs or 1) * math.ceil(batches / accumulation)  # as the loop counts
    output_dir = config.training.output_dir
    return Plan(
        teacher_parameters=estimate_parameters(checked.teacher_config),
        student_parameters=estimate_parameters(checked.student_config),
        train_examples=len(train_examples),
        train_tokens=sum(len(example["input_ids"]) for example in train_examples),
        counted_tokens=sum(_counted(example["labels"]) for example in train_examples),
        eval_examples=eval_count,
        steps=steps,
        effective_batch=config.optimization.batch_size * accumulation * world_size,
        kd_path="class logits (B, num_labels)" if checked.classifies else kd_path(config),
        output_dir=output_dir,
        export_dir=str(Path(output_dir) / config.export.folder),
        processes=world_size,
    )
