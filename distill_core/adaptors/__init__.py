"""Adaptors: what a model's outputs mean to distill (docs/adaptors.md).

The package's modules import one way, so none of them needs a deferred import:

- :mod:`~distill_core.adaptors.contract`: the keys of an adaptor's dict, reading features from it
  (:func:`select_layers`, :func:`feature_mask`), and :func:`auto_adaptor` for plain Hugging Face
  outputs. Imports nothing from the package.
- :mod:`~distill_core.adaptors.checks`: the checks of adaptor outputs. Imports the contract and ``logits``.
- :mod:`~distill_core.adaptors.kinds`: model kinds (:func:`model_kind`), the output head, and
  the keyword arguments a model call takes (:func:`forward_keywords`).
  Imports nothing from the package.
- :mod:`~distill_core.adaptors.auto`: the automatic adaptors chosen by kind
  (:func:`auto_adaptor_for`). Imports the contract and ``kinds``.
- :mod:`~distill_core.adaptors.bound`: :class:`BoundAdaptor`, a user's adaptor or the automatic
  one bound to its model. Imports the contract and ``auto``.
- :mod:`~distill_core.adaptors.logits`: the logits of an adaptor's dict as views the KD term
  reads (dense, or hidden states × head a chunk at a time); the teacher cache's stored rows are a
  third kind. Imports nothing from the package.
- :mod:`~distill_core.adaptors.first_step`: the checks of a task's first micro-batch, run once
  around its loss. Imports the contract, ``checks`` and ``logits``.

Everything public is importable from ``distill_core.adaptors`` itself.
"""

from __future__ import annotations

from distill_core.adaptors.auto import (
    AutoAdaptor,
    CausalLMAdaptor,
    EncoderDecoderAdaptor,
    auto_adaptor_for,
    causal_lm_targets,
)
from distill_core.adaptors.bound import BoundAdaptor
from distill_core.adaptors.checks import check_adaptor_output, check_pair
from distill_core.adaptors.kinds import (
    IGNORE_INDEX,
    LOGITS_TO_KEEP_ARGS,
    MODEL_KINDS,
    ModelKind,
    forward_keywords,
    head_extra_parameters,
    model_kind,
    output_head,
)
from distill_core.adaptors.first_step import check_terms, checked_first_step, checked_plain_step, losses_for_check
from distill_core.adaptors.logits import (
    DenseLogits,
    HeadLogits,
    LogitsView,
    TeacherChunk,
    head_params,
    is_chunked,
    logits_view,
)
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
    "LOGITS_TO_KEEP_ARGS",
    "MODEL_KINDS",
    "Adaptor",
    "AutoAdaptor",
    "BoundAdaptor",
    "CausalLMAdaptor",
    "DenseLogits",
    "EncoderDecoderAdaptor",
    "Feature",
    "HeadLogits",
    "LogitsView",
    "TeacherChunk",
    "ModelKind",
    "as_list",
    "auto_adaptor",
    "auto_adaptor_for",
    "causal_lm_targets",
    "check_adaptor_output",
    "check_pair",
    "check_terms",
    "checked_first_step",
    "checked_plain_step",
    "feature_mask",
    "forward_keywords",
    "head_extra_parameters",
    "head_params",
    "is_chunked",
    "logits_view",
    "losses_for_check",
    "model_kind",
    "output_head",
    "select_layers",
]
