"""Load the packaged MiniLM teacher and cut students out of it.

A student is a copy of the (fine-tuned) teacher that keeps the embeddings, the pooler, the
classifier head and a few of the transformer layers, so it starts from the teacher's knowledge
instead of from noise. Which layers to keep: see :func:`distill_core.layer_mapping.student_init_layers`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from distill_core.demo.assets import TEACHER_MODEL, offline_hub, require_module

HF_INSTALL = 'pip install "transformers>=4.40"'


def _transformers() -> Any:
    require_module("transformers", HF_INSTALL, "the demo and the examples")
    offline_hub()
    import transformers

    transformers.logging.set_verbosity_error()  # "newly initialised head" notices are expected here
    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_tokenizer() -> Any:
    """Return the teacher's (fast, uncased WordPiece) tokenizer, from the package's files."""
    return _transformers().AutoTokenizer.from_pretrained(str(TEACHER_MODEL.path()))


def load_pretrained(model_class: str = "AutoModelForSequenceClassification", *, seed: int = 0,
                    **config_overrides: Any) -> nn.Module:
    """Return the packaged MiniLM with a new task head, e.g. ``num_labels=2``.

    :param model_class: a transformers auto class name (``AutoModelForTokenClassification``,
        ``AutoModelForQuestionAnswering``...).
    :param seed: seeds the new head's initialisation, so the same seed gives the same model.
    """
    transformers = _transformers()
    torch.manual_seed(seed)
    return getattr(transformers, model_class).from_pretrained(str(TEACHER_MODEL.path()), **config_overrides)


def load_saved(path: str, model_class: str = "AutoModelForSequenceClassification") -> nn.Module:
    """Return a model written by ``save_pretrained`` (e.g. a cached fine-tuned teacher)."""
    return getattr(_transformers(), model_class).from_pretrained(path)


def make_student(teacher: nn.Module, teacher_layers: Sequence[int]) -> nn.Module:
    """Return a copy of a BERT-family ``teacher`` that keeps only the transformer layers ``teacher_layers``.

    Embeddings, pooler and task head are copied whole, so the student has the teacher's width and
    vocabulary; its ``config.num_hidden_layers`` is ``len(teacher_layers)``.

    :param teacher_layers: 0-based indices of the teacher's layers, in the order the student runs them.
    """
    encoder = teacher.base_model.encoder
    num_layers = len(encoder.layer)
    bad = [index for index in teacher_layers if not 0 <= index < num_layers]
    if not teacher_layers or bad:
        raise ValueError(
            f"teacher_layers must be a non-empty list of indices in 0..{num_layers - 1}, got {list(teacher_layers)}")
    student = copy.deepcopy(teacher)
    student.base_model.encoder.layer = nn.ModuleList(copy.deepcopy(encoder.layer[i]) for i in teacher_layers)
    student.config.num_hidden_layers = len(teacher_layers)
    if hasattr(student.config, "layer_types") and student.config.layer_types:
        student.config.layer_types = [student.config.layer_types[i] for i in teacher_layers]
    return student


def freeze_embeddings(model: nn.Module) -> None:
    """Stop training the embedding layer (about half of MiniLM's parameters); speeds up CPU training a lot."""
    for parameter in model.base_model.embeddings.parameters():
        parameter.requires_grad_(False)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def count_parameters(model: nn.Module, *, embeddings: bool = True) -> int:
    """Return the number of parameters, optionally without the embedding layer."""
    total = sum(parameter.numel() for parameter in model.parameters())
    if not embeddings:
        total -= sum(parameter.numel() for parameter in model.base_model.embeddings.parameters())
    return total


def with_hidden_states(model: nn.Module) -> nn.Module:
    """Make ``model(**batch)`` also return every layer's hidden states (needed for hidden matches)."""
    model.config.output_hidden_states = True
    return model


