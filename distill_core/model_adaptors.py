"""Kept for code that imported the automatic adaptors from here: they live in distill_core.adaptors.

``from distill_core.adaptors import auto_adaptor_for, model_kind, ...`` is the import to use.
``unwrap_model`` is :func:`distill_core.modules.unwrap`, the one unwrap helper.
"""

from __future__ import annotations

from distill_core.adaptors.auto import (
    IGNORE_INDEX,
    MODEL_KINDS,
    AutoAdaptor,
    CausalLMAdaptor,
    EncoderDecoderAdaptor,
    ModelKind,
    auto_adaptor_for,
    causal_lm_targets,
    model_kind,
    output_head,
)
from distill_core.modules import unwrap as unwrap_model

__all__ = [
    "IGNORE_INDEX",
    "MODEL_KINDS",
    "AutoAdaptor",
    "CausalLMAdaptor",
    "EncoderDecoderAdaptor",
    "ModelKind",
    "auto_adaptor_for",
    "causal_lm_targets",
    "model_kind",
    "output_head",
    "unwrap_model",
]
