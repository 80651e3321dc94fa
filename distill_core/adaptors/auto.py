"""Automatic adaptors chosen by model kind: causal LMs, encoder-decoders, and everything else.

A distiller given ``adaptor=None`` calls :func:`auto_adaptor_for` with each model. The adaptor it
returns is called like any adaptor, ``adaptor(batch, model_outputs)``, and also says how the model
must be called:

- ``adaptor.model_kwargs``: keyword arguments to add to the model call (merged over the user's,
  the adaptor's win); empty except in chunked mode.
- ``adaptor.model_batch(batch)``: the batch to pass to the model (chunked mode drops ``labels``,
  from which Hugging Face would build the full logits for its own loss). The adaptor itself is
  called with the batch as the dataloader gave it, labels included.

Kinds are :func:`~distill_core.adaptors.kinds.model_kind`'s.

Wrapped models (``DataParallel``, ``DistributedDataParallel``, ``torch.compile``) are looked through
with :func:`distill_core.modules.unwrap`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from distill_core.adaptors.contract import ADAPTOR_KEYS, ENCODER_DECODER_FEATURES, HF_OUTPUT_NAMES, auto_adaptor
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
from distill_core.errors import AdaptorError
from distill_core.modules import unwrap

__all__ = ["AutoAdaptor", "CausalLMAdaptor", "EncoderDecoderAdaptor", "auto_adaptor_for", "causal_lm_targets"]

def _require_model_output(model_outputs: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(model_outputs, Mapping):
        raise AdaptorError(
            f"adaptor is None, but {name} returned {type(model_outputs).__name__}, not a Hugging Face "
            f"ModelOutput; pass adaptor_T/adaptor_S functions returning a dict with keys {', '.join(ADAPTOR_KEYS)}"
        )
    return model_outputs


def _check_positions(tensor: torch.Tensor, name: str, expected: tuple[int, int], what: str) -> None:
    if tuple(tensor.shape) != expected:
        raise AdaptorError(
            f"the batch's {name!r} has shape {tuple(tensor.shape)}, but the model's {what} cover {expected} "
            f"(batch, length) positions; give one entry per token"
        )


def causal_lm_targets(batch: Any, batch_size: int, length: int, device: torch.device) -> tuple[torch.Tensor, Any]:
    """Return ``(logits_mask, labels)`` for a causal LM's logits at positions 0..L-2, each predicting the next token.

    ``logits_mask`` (B, L-1), bool: the target ``labels[:, 1:]`` is not -100 (when the batch has
    ``labels``), and both the predicting and the predicted token are real (``attention_mask[:, :-1]``
    and ``attention_mask[:, 1:]``, when given; the first also drops predictions made at left padding).
    All ones when the batch has neither. ``labels`` (B, L-1): ``labels[:, 1:]`` (-100 kept); without
    labels, ``input_ids[:, 1:]`` with -100 where the mask is 0; None when the batch has neither.
    """
    fields = batch if isinstance(batch, Mapping) else {}
    labels, attention_mask = fields.get("labels"), fields.get("attention_mask")
    if labels is not None:
        _check_positions(labels, "labels", (batch_size, length), "logits")
        keep = labels[:, 1:] != IGNORE_INDEX
    else:
        keep = torch.ones(batch_size, max(length - 1, 0), dtype=torch.bool, device=device)
    if attention_mask is not None:
        _check_positions(attention_mask, "attention_mask", (batch_size, length), "logits")
        real = attention_mask.bool()
        keep = keep & real[:, 1:] & real[:, :-1]
    if labels is not None:
        return keep, labels[:, 1:]
    input_ids = fields.get("input_ids")
    if isinstance(input_ids, torch.Tensor) and tuple(input_ids.shape) == (batch_size, length):
        return keep, input_ids[:, 1:].masked_fill(~keep, IGNORE_INDEX)
    return keep, None


class AutoAdaptor:
    """The automatic adaptor for a model that is neither a causal LM nor an encoder-decoder.

    Same output as :func:`~distill_core.adaptors.auto_adaptor`; the model is called as given.
    """

    kind: ModelKind = "other"
    chunked = False

    def __init__(self, model_name: str = "the model") -> None:
        self.model_name = model_name

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the model call needs for this adaptor (merge over the user's)."""
        return {}

    def model_batch(self, batch: Any) -> Any:
        """The batch to pass to the model (the adaptor still gets the original batch)."""
        return batch

    def __call__(self, batch: Any, model_outputs: Any) -> dict[str, Any]:
        return auto_adaptor(batch, model_outputs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name}, chunked={self.chunked})"


def _loss_and_inputs_mask(batch: Any, outputs: Mapping[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """Add the fields every automatic adaptor returns alike: ``losses`` and ``inputs_mask``."""
    if outputs.get("loss") is not None:
        results["losses"] = [outputs["loss"]]
    if isinstance(batch, Mapping) and batch.get("attention_mask") is not None:
        results["inputs_mask"] = batch["attention_mask"]
    return results


class CausalLMAdaptor(AutoAdaptor):
    """Causal LM: logits ``[:, :-1]`` paired with ``labels[:, 1:]``, masked by -100 and padding.

    Returns ``logits`` (B, L-1, V) (or, chunked, ``logits_hidden`` (B, L-1, D) and ``logits_head``),
    ``logits_mask`` and ``labels`` (:func:`causal_lm_targets`), ``losses`` ([outputs.loss] when
    the model computed one), ``hidden``, ``attention`` and ``inputs_mask`` (the attention mask).

    Chunked mode never needs the model's (B, L, V) logits: the model is called with
    :attr:`model_kwargs` (``output_hidden_states=True``, ``logits_to_keep=1`` where the forward
    takes it, read through wrappers such as peft's by :func:`~distill_core.adaptors.kinds.forward_keywords`,
    ``use_cache=False``) and :meth:`model_batch` (no ``labels``), so it builds logits for
    the last position only, (B, 1, V). ``losses`` is then absent (the model had no labels); a
    hard-label loss is computed from ``logits_hidden``, ``logits_head`` and ``labels`` chunk by
    chunk. On the first call the adaptor checks that ``logits_head(hidden_states[-1])`` gives the
    model's own logits for the last position, so a model whose head does more (a scale, a bias
    outside the head, soft-capping) fails with a clear error instead of distilling wrong logits; a
    head holding parameters besides its weight and bias (a LoRA adapter on it) is refused at once.
    """

    kind: ModelKind = "causal_lm"

    def __init__(self, model: nn.Module, *, chunked: bool = False) -> None:
        model = unwrap(model)
        super().__init__(type(model).__name__)
        head = output_head(model)
        if head is None:
            raise AdaptorError(
                f"{self.model_name} has no output head: get_output_embeddings() must return a module with a "
                f"2-D weight (V, D) for the causal-LM adaptor; pass your own adaptor instead"
            )
        extra = head_extra_parameters(head) if chunked else []
        if extra:
            raise AdaptorError(
                f"{self.model_name}'s output head ({type(head).__name__}) holds parameters besides its weight and "
                f"bias ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}), e.g. a LoRA adapter on the head; "
                f"chunked token KD computes the logits from the head's weight and bias alone, so they would neither "
                f"count nor train. Leave the head out of the adapter's target_modules, or let this model use its "
                f"full logits (chunked_token_kd=None or False; chunked=False for auto_adaptor_for)"
            )
        self.head = head
        self.chunked = chunked
        # read through wrappers such as peft's PeftModel, whose forward(*args, **kwargs) hides the base model's
        takes = forward_keywords(model, (*LOGITS_TO_KEEP_ARGS, "use_cache"))
        self.logits_to_keep_arg = next((name for name in LOGITS_TO_KEEP_ARGS if name in takes), None)
        self.takes_use_cache = "use_cache" in takes
        self._head_checked = False

    @property
    def model_kwargs(self) -> dict[str, Any]:
        if not self.chunked:
            return {}
        kwargs: dict[str, Any] = {"output_hidden_states": True}
        if self.logits_to_keep_arg is not None:
            kwargs[self.logits_to_keep_arg] = 1
        if self.takes_use_cache:  # the key/value cache of every layer is of no use in training
            kwargs["use_cache"] = False
        return kwargs

    def model_batch(self, batch: Any) -> Any:
        if self.chunked and isinstance(batch, Mapping) and "labels" in batch:
            return {key: value for key, value in batch.items() if key != "labels"}
        return batch

    def __call__(self, batch: Any, model_outputs: Any) -> dict[str, Any]:
        outputs = _require_model_output(model_outputs, self.model_name)
        results: dict[str, Any] = {}
        if self.chunked:
            hidden_states = outputs.get("hidden_states")
            if not hidden_states:
                raise AdaptorError(
                    f"the chunked causal-LM adaptor needs hidden_states from {self.model_name}; call the model "
                    f"with adaptor.model_kwargs ({self.model_kwargs}) and adaptor.model_batch(batch)"
                )
            final = hidden_states[-1]
            if not self._head_checked:
                self._check_head(final, outputs.get("logits"))
            results["logits_hidden"] = final[:, :-1]
            results["logits_head"] = self.head
            anchor = final
        else:
            logits = outputs.get("logits")
            if logits is None:
                raise AdaptorError(f"{self.model_name} returned no 'logits'; is it a causal LM with its head?")
            results["logits"] = logits[:, :-1]
            anchor = logits
        keep, labels = causal_lm_targets(batch, anchor.shape[0], anchor.shape[1], anchor.device)
        results["logits_mask"] = keep
        if labels is not None:
            results["labels"] = labels
        if outputs.get("hidden_states") is not None:
            results["hidden"] = outputs["hidden_states"]
        if outputs.get("attentions") is not None:
            results["attention"] = outputs["attentions"]
        return _loss_and_inputs_mask(batch, outputs, results)

    def _check_head(self, final: torch.Tensor, logits: torch.Tensor | None) -> None:
        """First call only (it reads a value from the device once)."""
        if logits is None:
            return
        if self.logits_to_keep_arg is not None and logits.shape[1] > 1:
            raise AdaptorError(
                f"{self.model_name} built logits of shape {tuple(logits.shape)} for every position, which "
                f"chunked token KD exists to avoid; call the model with adaptor.model_kwargs ({self.model_kwargs}) "
                f"and adaptor.model_batch(batch)"
            )
        with torch.no_grad():
            # Outside autocast the hidden states may be half while the head is float32.
            expected = self.head(final[:, -1:].to(self.head.weight.dtype)).float()
            got = logits[:, -1:].float()
            error = float((expected - got).abs().max()) if expected.shape == got.shape else float("inf")
            bound = 1e-2 * float(got.abs().max()) + 1e-4  # loose enough for fp16/bf16 autocast
        if not error <= bound:
            raise AdaptorError(
                f"{self.model_name}'s logits are not logits_head(hidden_states[-1]) (largest difference {error:.3g} "
                f"on the last position): its head does more than get_output_embeddings() (a scale, a logits bias, "
                f"soft-capping), so chunked token KD would distil other logits; use chunked=False for this model"
            )
        self._head_checked = True


class EncoderDecoderAdaptor(AutoAdaptor):
    """Encoder-decoder (T5, BART): decoder logits, features of both stacks, and a mask per feature.

    ``logits`` (B, L_dec, V) unshifted (Hugging Face aligns ``labels`` with the decoder outputs);
    ``logits_mask`` = ``labels != -100`` & ``decoder_attention_mask`` (whichever the batch has; all
    ones with neither); ``labels``; ``losses``; ``encoder_hidden``, ``decoder_hidden``,
    ``encoder_attention``, ``decoder_attention``, ``cross_attention`` as the model returns them;
    ``inputs_mask`` = ``attention_mask``; ``masks``: encoder features → ``attention_mask``, decoder
    features → the decoder mask (``decoder_attention_mask``, else ``labels != -100``, else ones),
    ``cross_attention`` → decoder mask ⊗ encoder mask (B, L_dec, L_enc).
    """

    kind: ModelKind = "encoder_decoder"

    def __call__(self, batch: Any, model_outputs: Any) -> dict[str, Any]:
        outputs = _require_model_output(model_outputs, self.model_name)
        fields = batch if isinstance(batch, Mapping) else {}
        results: dict[str, Any] = {}
        for feature in ENCODER_DECODER_FEATURES:
            if outputs.get(HF_OUTPUT_NAMES[feature]) is not None:
                results[feature] = outputs[HF_OUTPUT_NAMES[feature]]
        logits = outputs.get("logits")
        decoder_shape = self._decoder_shape(logits, results)
        labels, decoder_attention_mask = fields.get("labels"), fields.get("decoder_attention_mask")
        attention_mask = fields.get("attention_mask")
        decoder_mask = None
        if labels is not None:
            if decoder_shape is not None:
                _check_positions(labels, "labels", decoder_shape, "decoder outputs")
            decoder_mask = labels != IGNORE_INDEX
            results["labels"] = labels
        if decoder_attention_mask is not None:
            if decoder_shape is not None:
                _check_positions(decoder_attention_mask, "decoder_attention_mask", decoder_shape, "decoder outputs")
            real = decoder_attention_mask.bool()
            logits_keep = real if decoder_mask is None else decoder_mask & real
            decoder_mask = real  # features run over every decoder input, labelled or not
        else:
            logits_keep = decoder_mask
        if decoder_mask is None and decoder_shape is not None:
            device = (logits if logits is not None else results["decoder_hidden"][0]).device
            decoder_mask = torch.ones(decoder_shape, dtype=torch.bool, device=device)
        if logits is not None:
            results["logits"] = logits
            results["logits_mask"] = logits_keep if logits_keep is not None else decoder_mask
        _loss_and_inputs_mask(batch, outputs, results)
        masks = self._feature_masks(results, attention_mask, decoder_mask)
        if masks:
            results["masks"] = masks
        return results

    @staticmethod
    def _decoder_shape(logits: torch.Tensor | None, results: Mapping[str, Any]) -> tuple[int, int] | None:
        if logits is not None:
            return (logits.shape[0], logits.shape[1])
        if results.get("decoder_hidden"):
            return tuple(results["decoder_hidden"][0].shape[:2])  # type: ignore[return-value]
        return None

    @staticmethod
    def _feature_masks(
        results: Mapping[str, Any], encoder_mask: torch.Tensor | None, decoder_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        masks: dict[str, torch.Tensor] = {}
        for feature in ("encoder_hidden", "encoder_attention"):
            if feature in results and encoder_mask is not None:
                masks[feature] = encoder_mask
        for feature in ("decoder_hidden", "decoder_attention"):
            if feature in results and decoder_mask is not None:
                masks[feature] = decoder_mask
        cross = results.get("cross_attention")
        if cross and decoder_mask is not None:
            batch, keys = cross[0].shape[0], cross[0].shape[-1]
            encoder = (
                encoder_mask.bool()
                if encoder_mask is not None
                else torch.ones(batch, keys, dtype=torch.bool, device=decoder_mask.device)
            )
            masks["cross_attention"] = decoder_mask.bool()[:, :, None] & encoder[:, None, :]
        return masks


def auto_adaptor_for(model: nn.Module, *, chunked: bool = False, kind: ModelKind | None = None) -> AutoAdaptor:
    """Return the automatic adaptor for ``model``'s kind (see the module doc for the rules).

    :param model: the teacher or the student (wrappers such as DDP or ``torch.compile`` are looked through).
    :param chunked: for causal LMs only: return ``logits_hidden``/``logits_head`` instead of
        ``logits``, for chunked token KD; call the model with ``adaptor.model_kwargs`` and
        ``adaptor.model_batch(batch)`` then.
    :param kind: force the kind when the detection rules get a model wrong.
    :raises AdaptorError: ``chunked=True`` for a model that is not a causal LM.
    """
    if kind is not None and kind not in MODEL_KINDS:
        raise ValueError(f"Expected argument `kind` to be one of {', '.join(MODEL_KINDS)} but got {kind!r}")
    inner = unwrap(model)
    kind = kind or model_kind(inner)
    name = type(inner).__name__
    if kind == "causal_lm":
        return CausalLMAdaptor(inner, chunked=chunked)
    if chunked:
        why = (
            "an encoder-decoder: T5 scales the hidden states before its head, BART adds a logits bias outside it, "
            "and neither forward can skip building the full logits"
            if kind == "encoder_decoder"
            else "not a causal LM"
        )
        raise AdaptorError(
            f"chunked=True is for causal LMs, whose logits are get_output_embeddings()(hidden_states[-1]) and "
            f"whose forward takes logits_to_keep; {name} is {why}. Use chunked=False (the model's own logits), "
            f"or pass kind='causal_lm' if this model is one"
        )
    if kind == "encoder_decoder":
        return EncoderDecoderAdaptor(name)
    return AutoAdaptor(name)
