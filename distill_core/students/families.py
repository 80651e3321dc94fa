"""Where each supported model family keeps the parts a student is cut from.

A family says, for one Hugging Face architecture, which modules are its transformer layers, which
module's input is the attention heads' concatenated output (the heads scored and pruned), which is
the MLP's intermediate activation, which norms' outputs carry the hidden (embedding) channels, and
how each parameter's dimensions map onto those kept sets. Building a student is then one generic
slicing of the teacher's ``state_dict`` (:mod:`distill_core.students.build`).

Supported: the Llama layout (``LlamaForCausalLM`` / ``LlamaModel`` and the families that share its
module names: Mistral, Qwen2, SmolLM2) and BERT-style encoders (``BertModel``,
``BertForSequenceClassification``, MiniLM).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["BERT", "LLAMA", "MODEL_TYPES", "Family", "family_named", "family_of"]

#: a dimension's kind: "hidden" (embedding channels), "q" (query/attention-output rows, per head),
#: "kv" (key/value rows, per key/value group), "mlp" (intermediate channels), None (kept whole)
Axis = str | None


@dataclass(frozen=True)
class Family:
    """How one architecture is laid out: its modules, its config fields and its parameters' axes."""

    name: str
    #: the transformer layers of the base model, in order
    layers: Callable[[nn.Module], nn.ModuleList]
    #: the module whose input is the concatenated attention heads' output (its input width is heads x head_dim)
    attention_output: Callable[[nn.Module], nn.Module]
    #: the module whose input is the MLP's intermediate activation
    mlp_output: Callable[[nn.Module], nn.Module]
    #: the norms of a layer whose outputs carry the hidden channels
    layer_norms: Callable[[nn.Module], list[nn.Module]]
    #: the norms outside the layers (embedding norm, final norm)
    outer_norms: Callable[[nn.Module], list[nn.Module]]
    #: (pattern, axes) over parameter names with the layer prefix removed; the first full match wins
    axes: tuple[tuple[str, tuple[Axis, ...]], ...]
    #: the prefix of a layer's parameters, with the layer index as group 1
    layer_prefix: str
    #: True when attention width must equal hidden size (BERT derives head size from hidden size)
    head_size_from_hidden: bool
    #: keyword arguments of a calibration forward pass (no key/value cache for decoders)
    call_options: dict[str, Any] = field(default_factory=dict)

    def num_heads(self, config: Any) -> int:
        return int(config.num_attention_heads)

    def num_kv_heads(self, config: Any) -> int:
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)

    def head_dim(self, config: Any) -> int:
        explicit = getattr(config, "head_dim", None)
        return int(explicit) if explicit else int(config.hidden_size) // int(config.num_attention_heads)

    def axes_of(self, name: str) -> tuple[Axis, ...] | None:
        """Return the axes of a parameter (its name without the layer prefix), or None when no rule names it."""
        for pattern, axes in self.axes:
            if re.fullmatch(pattern, name):
                return axes
        return None


def _llama_base(model: nn.Module) -> nn.Module:
    return model.base_model


LLAMA = Family(
    name="llama",
    layers=lambda model: _llama_base(model).layers,
    attention_output=lambda layer: layer.self_attn.o_proj,
    mlp_output=lambda layer: layer.mlp.down_proj,
    layer_norms=lambda layer: [layer.input_layernorm, layer.post_attention_layernorm],
    outer_norms=lambda model: [_llama_base(model).norm],
    axes=(
        (r"(.*\.)?embed_tokens\.weight", (None, "hidden")),
        (r"(lm_head|score)\.weight", (None, "hidden")),
        (r"(lm_head|score)\.bias", (None,)),
        (r"(.*\.)?(norm|input_layernorm|post_attention_layernorm)\.weight", ("hidden",)),
        (r"self_attn\.q_proj\.weight", ("q", "hidden")),
        (r"self_attn\.q_proj\.bias", ("q",)),
        (r"self_attn\.[kv]_proj\.weight", ("kv", "hidden")),
        (r"self_attn\.[kv]_proj\.bias", ("kv",)),
        (r"self_attn\.o_proj\.weight", ("hidden", "q")),
        (r"self_attn\.o_proj\.bias", ("hidden",)),
        (r"self_attn\.[qk]_norm\.weight", (None,)),  # per head_dim (Qwen3-style), unchanged
        (r"mlp\.(gate|up)_proj\.weight", ("mlp", "hidden")),
        (r"mlp\.(gate|up)_proj\.bias", ("mlp",)),
        (r"mlp\.down_proj\.weight", ("hidden", "mlp")),
        (r"mlp\.down_proj\.bias", ("hidden",)),
    ),
    layer_prefix=r"(?:.*\.)?layers\.(\d+)\.",
    head_size_from_hidden=False,
    call_options={"use_cache": False},
)


def _bert_base(model: nn.Module) -> nn.Module:
    return model.base_model


BERT = Family(
    name="bert",
    layers=lambda model: _bert_base(model).encoder.layer,
    attention_output=lambda layer: layer.attention.output.dense,
    mlp_output=lambda layer: layer.output.dense,
    layer_norms=lambda layer: [layer.attention.output.LayerNorm, layer.output.LayerNorm],
    outer_norms=lambda model: [_bert_base(model).embeddings.LayerNorm],
    axes=(
        (r"(.*\.)?embeddings\.(word|position|token_type)_embeddings\.weight", (None, "hidden")),
        (r"(.*\.)?LayerNorm\.(weight|bias)", ("hidden",)),
        (r"attention\.self\.(query|key|value)\.weight", ("q", "hidden")),
        (r"attention\.self\.(query|key|value)\.bias", ("q",)),
        (r"attention\.output\.dense\.weight", ("hidden", "q")),
        (r"attention\.output\.dense\.bias", ("hidden",)),
        (r"intermediate\.dense\.weight", ("mlp", "hidden")),
        (r"intermediate\.dense\.bias", ("mlp",)),
        (r"output\.dense\.weight", ("hidden", "mlp")),
        (r"output\.dense\.bias", ("hidden",)),
        (r"(.*\.)?pooler\.dense\.weight", ("hidden", "hidden")),
        (r"(.*\.)?pooler\.dense\.bias", ("hidden",)),
        (r"classifier\.weight", (None, "hidden")),
        (r"classifier\.bias", (None,)),
        (r"(.*\.)?embeddings\.(position_ids|token_type_ids)", (None, None)),
    ),
    layer_prefix=r"(?:.*\.)?encoder\.layer\.(\d+)\.",
    head_size_from_hidden=True,
)

_FAMILIES = {"llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "bert": BERT}


def family_of(model: nn.Module) -> Family:
    """Return the family of a Hugging Face model, from its ``config.model_type``.

    :raises ValueError: for a model type no family covers, listing those that are covered.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _FAMILIES:
        raise ValueError(f"cannot build a student of a {type(model).__name__} (model_type {model_type!r}); "
                         f"supported model types: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[model_type]


def family_named(model_type: str | None) -> Family | None:
    """Return the family of a ``config.json``'s ``model_type``, or None when no family covers it."""
    return _FAMILIES.get(model_type) if isinstance(model_type, str) else None


#: the model types a student can be cut from
MODEL_TYPES: tuple[str, ...] = tuple(sorted(_FAMILIES))
