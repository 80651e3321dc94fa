"""Model kinds: which automatic adaptor a model gets, and where its output head is.

Kinds (:func:`model_kind`):

- ``"encoder_decoder"``: ``model.config.is_encoder_decoder`` is true (T5, BART, mT5, Pegasus...).
- ``"causal_lm"``: the model has an output head (``get_output_embeddings()`` returns a module with
  a 2-D weight) and is a causal LM: its class is one ``AutoModelForCausalLM`` maps to, or its name
  ends in ``ForCausalLM`` / ``LMHeadModel``, or it can generate and is not a masked LM.
- ``"other"``: classifiers, QA, token classification, masked LMs, plain modules:
  :func:`distill_core.adaptors.auto_adaptor`, unchanged.

Wrapped models are looked through with :func:`distill_core.modules.unwrap`.
"""

from __future__ import annotations

import sys
from typing import Literal

import torch
from torch import nn

from distill_core.modules import unwrap

__all__ = ["IGNORE_INDEX", "MODEL_KINDS", "ModelKind", "model_kind", "output_head"]

ModelKind = Literal["causal_lm", "encoder_decoder", "other"]
MODEL_KINDS = ("causal_lm", "encoder_decoder", "other")
IGNORE_INDEX = -100
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def output_head(model: nn.Module) -> nn.Module | None:
    """Return the model's output head (``get_output_embeddings()``) if it has a 2-D weight, else None."""
    get = getattr(unwrap(model), "get_output_embeddings", None)
    if not callable(get):
        return None
    try:
        head = get()
    except (AttributeError, NotImplementedError):
        return None
    weight = getattr(head, "weight", None)
    if isinstance(head, nn.Module) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return head
    return None


def _auto_class_names(mapping: str) -> set[str]:
    """Class names in one of transformers' auto mappings (empty when transformers is not loaded)."""
    if "transformers" not in sys.modules:  # a model from transformers has loaded it already
        return set()
    try:
        from transformers.models.auto import modeling_auto
    except ImportError:
        return set()
    names: set[str] = set()
    for value in getattr(modeling_auto, mapping, {}).values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    return names


def model_kind(model: nn.Module) -> ModelKind:
    """Return ``"encoder_decoder"``, ``"causal_lm"`` or ``"other"`` for ``model`` (rules in the module doc)."""
    model = unwrap(model)
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False) is True:
        return "encoder_decoder"
    if output_head(model) is None:
        return "other"
    name = type(model).__name__
    if name.endswith(_CAUSAL_SUFFIXES) or name in _auto_class_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"):
        return "causal_lm"
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and can_generate() and name not in _auto_class_names("MODEL_FOR_MASKED_LM_MAPPING_NAMES"):
        return "causal_lm"
    return "other"
