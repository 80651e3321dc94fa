"""Adaptors: what a model's outputs mean to distill (docs/adaptors.md).

The package's modules import one way, so none of them needs a deferred import:

- :mod:`~distill_core.adaptors.contract`: the keys of an adaptor's dict, reading features from it
  (:func:`select_layers`, :func:`feature_mask`), and :func:`auto_adaptor` for plain Hugging Face
  outputs. Imports nothing from the package.
- :mod:`~distill_core.adaptors.checks`: the first-step checks of adaptor outputs. Imports the contract.
- :mod:`~distill_core.adaptors.auto`: model kinds and the automatic adaptors chosen by kind
  (:func:`auto_adaptor_for`). Imports the contract.
- :mod:`~distill_core.adaptors.bound`: :class:`BoundAdaptor`, a user's adaptor or the automatic
  one bound to its model. Imports the contract and ``auto``.

Everything public is importable from ``distill_core.adaptors`` itself.
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
from distill_core.adaptors.bound import BoundAdaptor
from distill_core.adaptors.checks import check_adaptor_output, check_pair
from distill_core.adaptors.contract import (
    ADAPTOR_KEYS,
    ATTENTION_FEATURES,
    ENCODER_DECODER_FEATURES,
    FEATURE_KEYS,
    FEATURES,
    HF_OUTPUT_NAMES,
    HIDDEN_FEATURES,
    Adaptor,
    Feature,
    as_list,
    auto_adaptor,
    feature_mask,
    select_layers,
)

__all__ = [
    "ADAPTOR_KEYS",
    "ATTENTION_FEATURES",
    "ENCODER_DECODER_FEATURES",
    "FEATURES",
    "FEATURE_KEYS",
    "HF_OUTPUT_NAMES",
    "HIDDEN_FEATURES",
    "IGNORE_INDEX",
    "MODEL_KINDS",
    "Adaptor",
    "AutoAdaptor",
    "BoundAdaptor",
    "CausalLMAdaptor",
    "EncoderDecoderAdaptor",
    "Feature",
    "ModelKind",
    "as_list",
    "auto_adaptor",
    "auto_adaptor_for",
    "causal_lm_targets",
    "check_adaptor_output",
    "check_pair",
    "feature_mask",
    "model_kind",
    "output_head",
    "select_layers",
]
