"""The adaptor contract: the keys of an adaptor's dict, reading features from it, and ``auto_adaptor``.

An adaptor is ``adaptor(batch, model_outputs) -> dict`` (it may also take a ``task`` argument in
multi-task runs). The dict's keys, all optional:

- ``logits``: a tensor (B, C) or (B, L, C), or a list of them (e.g. start and end logits).
- ``logits_mask``: (B, L), 1 = keep; for 3-D logits (or ``logits_hidden``), the positions KD
  averages over.
- ``logits_hidden`` and ``logits_head`` (chunked token KD, instead of ``logits``): the final hidden
  states (B, L, D) whose logits are ``logits_head(logits_hidden)``, and the output head, an
  ``nn.Module`` with a 2-D ``weight`` (V, D) (an ``nn.Linear``: ``F.linear(h, weight, bias)``). The
  loss builds logits a chunk of rows at a time, so (B·L, V) is never held at once.
- ``losses``: a scalar tensor or a list of them (hard-label losses, summed).
- ``labels``: class ids, used by ``probability_shift``; token ids (B, L) aligned with the logits,
  -100 = ignore, for token-level outputs.
- Features, each a list/tuple with one tensor per layer:
  ``hidden`` (B, L, D) and ``attention`` (B, H, L, L) (Hugging Face's ``hidden_states`` and
  ``attentions``); for encoder-decoders ``encoder_hidden``, ``decoder_hidden`` (B, L_enc|L_dec, D),
  ``encoder_attention``, ``decoder_attention`` (B, H, L, L) and ``cross_attention``
  (B, H, L_dec, L_enc).
- ``inputs_mask``: (B, L), 1 = real token; masks the intermediate matches.
- ``masks``: ``{feature name: mask}``, a mask per feature where ``inputs_mask`` does not fit (an
  encoder-decoder's decoder features); (B, L) for hidden states and self-attention, (B, L_q, L_k)
  pair masks for attention maps (``cross_attention`` needs one). A feature not in ``masks`` is
  masked by ``inputs_mask`` (:func:`feature_mask`).

Masks may be bool, integer or float 0/1 tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch

from distill_core.errors import AdaptorError

HIDDEN_FEATURES = ("hidden", "encoder_hidden", "decoder_hidden")
ATTENTION_FEATURES = ("attention", "encoder_attention", "decoder_attention", "cross_attention")
FEATURE_KEYS = HIDDEN_FEATURES + ATTENTION_FEATURES
ENCODER_DECODER_FEATURES = HIDDEN_FEATURES[1:] + ATTENTION_FEATURES[1:]
# A match's ``feature`` field: the names of FEATURE_KEYS in the order the config reference lists
# them; distill_core.config validates a match's feature against this Literal.
Feature = Literal[
    "hidden",
    "attention",
    "encoder_hidden",
    "decoder_hidden",
    "encoder_attention",
    "decoder_attention",
    "cross_attention",
]
FEATURES: tuple[str, ...] = get_args(Feature)
ADAPTOR_KEYS = (
    "logits",
    "logits_mask",
    "logits_hidden",
    "logits_head",
    "losses",
    *FEATURE_KEYS,
    "inputs_mask",
    "masks",
    "labels",
)
# Where each feature comes from in a Hugging Face ModelOutput, and the flag that asks for it.
HF_OUTPUT_NAMES = {
    "hidden": "hidden_states",
    "attention": "attentions",
    "encoder_hidden": "encoder_hidden_states",
    "decoder_hidden": "decoder_hidden_states",
    "encoder_attention": "encoder_attentions",
    "decoder_attention": "decoder_attentions",
    "cross_attention": "cross_attentions",
}
Adaptor = Callable[..., Mapping[str, Any]]


def auto_adaptor(batch: Any, model_outputs: Any) -> dict[str, Any]:
    """Map a Hugging Face ``ModelOutput`` to the adaptor dict.

    ``logits`` (or ``start_logits``/``end_logits``), ``hidden_states``, ``attentions`` and ``loss``
    are taken when present; ``inputs_mask`` is the batch's ``attention_mask``. For causal LMs and
    encoder-decoders, :func:`distill_core.adaptors.auto_adaptor_for` picks an adaptor that
    also shifts and masks the token logits.
    """
    if not isinstance(model_outputs, Mapping):
        raise AdaptorError(
            f"adaptor is None, but the model returned {type(model_outputs).__name__}, not a Hugging "
            f"Face ModelOutput; pass adaptor_T/adaptor_S functions returning a dict with keys "
            f"{', '.join(ADAPTOR_KEYS)}"
        )
    results: dict[str, Any] = {}
    if model_outputs.get("logits") is not None:
        results["logits"] = model_outputs["logits"]
    elif model_outputs.get("start_logits") is not None:
        results["logits"] = [model_outputs["start_logits"], model_outputs["end_logits"]]
    if model_outputs.get("hidden_states") is not None:
        results["hidden"] = model_outputs["hidden_states"]
    if model_outputs.get("attentions") is not None:
        results["attention"] = model_outputs["attentions"]
    if model_outputs.get("loss") is not None:
        results["losses"] = [model_outputs["loss"]]
    if isinstance(batch, Mapping) and batch.get("attention_mask") is not None:
        results["inputs_mask"] = batch["attention_mask"]
    return results


def as_list(value: Any) -> list[Any]:
    """A tensor becomes a one-element list; lists and tuples become lists."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def feature_mask(results: Mapping[str, Any], feature: str) -> torch.Tensor | None:
    """Return the mask for ``feature``: ``results['masks'][feature]`` when given, else ``inputs_mask``.

    None when the adaptor returned neither (the match then runs unmasked).
    """
    masks = results.get("masks")
    if masks and masks.get(feature) is not None:
        return masks[feature]
    return results.get("inputs_mask")


def select_layers(results: Mapping[str, Any], feature: str, layer: int | Sequence[int], role: str, match: str) -> Any:
    """Return ``results[feature][layer]`` (or a list of them), with an error naming the match."""
    layers = results.get(feature)
    if layers is None:
        raise AdaptorError(_missing_feature_message(results, feature, role, match))
    wanted = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if len(layers) == 0:
        hint = (
            "; Hugging Face returns no attention maps with attn_implementation='sdpa' or 'flash_attention_2': "
            "load the model with attn_implementation='eager'"
            if feature in ATTENTION_FEATURES
            else ""
        )
        raise AdaptorError(f"{match}: {role}[{feature!r}] is empty (0 layers){hint}")
    for index in wanted:
        if index >= len(layers):
            raise AdaptorError(
                f"{match}: layer {index} is out of range for {role}[{feature!r}], which has {len(layers)} layers "
                f"(valid indices 0..{len(layers) - 1})"
            )
    if isinstance(layer, (list, tuple)):
        return [layers[index] for index in wanted]
    return layers[layer]


def _missing_feature_message(results: Mapping[str, Any], feature: str, role: str, match: str) -> str:
    returned = [key for key in FEATURE_KEYS if results.get(key) is not None]
    head = (
        f"{match} needs {feature!r} from {role}, but it returned keys {sorted(results)} "
        f"(features: {', '.join(returned) if returned else 'none'})"
    )
    encoder_decoder = [key for key in returned if key in ENCODER_DECODER_FEATURES]
    if encoder_decoder and feature in ("hidden", "attention"):
        names = [key for key in ENCODER_DECODER_FEATURES if key.endswith(feature)]
        return (
            f"{head}. This is an encoder-decoder: its features are named {', '.join(ENCODER_DECODER_FEATURES)}; "
            f"set the match's feature to {' or '.join(repr(name) for name in names)}"
        )
    flag = "output_hidden_states" if feature in HIDDEN_FEATURES else "output_attentions"
    hint = f"return {{'{feature}': outputs.{HF_OUTPUT_NAMES[feature]}, ...}}" if feature in HF_OUTPUT_NAMES else ""
    if not hint:
        return head
    if any(key in returned for key in (HIDDEN_FEATURES if flag == "output_hidden_states" else ATTENTION_FEATURES)):
        # The model was asked for this kind of output; this adaptor does not return this feature.
        return f"{head}; {hint}" + (
            f" (an encoder-only or decoder-only model has no {feature!r}; use 'hidden' or 'attention')"
            if feature in ENCODER_DECODER_FEATURES and not encoder_decoder
            else ""
        )
    return f"{head}; {hint} (and call the model with {flag}=True)"
