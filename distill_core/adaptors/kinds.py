"""Model kinds: which automatic adaptor a model gets, and where its output head is.

Kinds (:func:`model_kind`):

- ``"encoder_decoder"``: ``model.config.is_encoder_decoder`` is true (T5, BART, mT5, Pegasus...).
- ``"causal_lm"``: the model has an output head (``get_output_embeddings()`` returns a module with
  a 2-D weight) and is a causal LM: its class is one ``AutoModelForCausalLM`` maps to, or its name
  ends in ``ForCausalLM`` / ``LMHeadModel``, or it can generate and is not a masked LM.
- ``"other"``: classifiers, QA, token classification, masked LMs, plain modules:
  :func:`distill_core.adaptors.auto_adaptor`, unchanged.

Wrapped models are looked through with :func:`distill_core.modules.unwrap`.

:func:`forward_keywords` says which keyword arguments a model call takes (``logits_to_keep``,
``use_cache``), looking through wrappers whose forward passes ``**kwargs`` on to the model inside
(peft's ``PeftModel``), whose own signature names neither.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from distill_core.modules import unwrap

__all__ = [
    "IGNORE_INDEX",
    "LOGITS_TO_KEEP_ARGS",
    "MODEL_KINDS",
    "ModelKind",
    "forward_keywords",
    "head_extra_parameters",
    "model_kind",
    "output_head",
]

ModelKind = Literal["causal_lm", "encoder_decoder", "other"]
MODEL_KINDS = ("causal_lm", "encoder_decoder", "other")
IGNORE_INDEX = -100
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
#: the forward argument that makes a causal LM build logits for its last positions only (older
#: transformers versions name it num_logits_to_keep)
LOGITS_TO_KEEP_ARGS = ("logits_to_keep", "num_logits_to_keep")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _wrapped_model(model: nn.Module) -> nn.Module | None:
    """The model a wrapper calls: peft's ``get_base_model()``, else its submodule ``model``, ``module`` or
    ``base_model``, or None."""
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        try:
            inner = get_base_model()
        except (AttributeError, TypeError, ValueError):
            inner = None
        if isinstance(inner, nn.Module) and inner is not model:
            return inner
    for name in ("model", "module", "base_model"):
        inner = model._modules.get(name)  # registered submodules only, not attributes forwarded by __getattr__
        if isinstance(inner, nn.Module) and inner is not model:
            return inner
    return None


def forward_keywords(model: nn.Module, names: Iterable[str]) -> set[str]:
    """Return which of ``names`` a call of ``model`` takes as keyword arguments.

    A forward that names an argument takes it. A forward that does not, but takes ``**kwargs``, is
    taken to pass them on to the model it wraps (peft's ``get_base_model()``, or its submodule
    ``model``, ``module`` or ``base_model``), whose forward is read the same way. A wrapper that
    swallows them instead is caught where it matters: the chunked causal-LM adaptor checks on its
    first call that the model built logits for the last position only.

    :param model: any module; DDP, DataParallel and ``torch.compile`` wrappers are looked through.
    :param names: the keyword arguments to look for, e.g. :data:`LOGITS_TO_KEEP_ARGS`.
    """
    wanted, found = set(names), set()
    seen: set[int] = set()
    current: nn.Module | None = unwrap(model)
    while current is not None and id(current) not in seen and wanted - found:
        seen.add(id(current))
        try:
            parameters = inspect.signature(current.forward).parameters
        except (TypeError, ValueError):
            break
        found |= {name for name, parameter in parameters.items() if parameter.kind in _NAMED} & wanted
        if not any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
            break
        current = _wrapped_model(current)
    return found


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


def head_extra_parameters(head: nn.Module) -> list[str]:
    """Return the names of ``head``'s parameters other than its own ``weight`` and ``bias``.

    A plain head (``nn.Linear``, a tied embedding) has none. A head wrapped by an adapter (peft's
    LoRA on ``lm_head``: ``base_layer.weight``, ``lora_A.default.weight``, ...) computes more than
    ``hidden @ weight.T + bias``, which is all chunked token KD computes from it.
    """
    return [name for name, _ in head.named_parameters() if name not in ("weight", "bias")]


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
