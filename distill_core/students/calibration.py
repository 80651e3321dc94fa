"""Calibration: one forward pass per batch of text, every importance score gathered by hooks.

The hooks reduce each activation to per-sample statistics as soon as it is computed
(:mod:`distill_core.students.importance`), so memory holds one batch's activations and a few
vectors per layer, whatever the size of the calibration set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill_core.students.families import family_of
from distill_core.students.importance import block_influence_sums, channel_means, head_means

__all__ = ["ImportanceScores", "calibrate"]


@dataclass
class ImportanceScores:
    """What calibration measured on a teacher: one score per layer, head, MLP channel and hidden channel.

    Higher means more important everywhere: a layer's block influence, a head's or channel's
    root-mean-square (over samples) of its mean activation magnitude (over tokens).
    """

    block_influence: list[float]
    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]
    hidden: torch.Tensor
    samples: int
    tokens: int
    batches: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the scores as JSON-ready lists."""
        return {"block_influence": [round(value, 6) for value in self.block_influence],
                "heads": [scores.tolist() for scores in self.heads],
                "mlp": [scores.tolist() for scores in self.mlp],
                "hidden": self.hidden.tolist(),
                "samples": self.samples, "tokens": self.tokens, "batches": self.batches}


class _Accumulator:
    """Running sums of every score over the batches seen so far."""

    def __init__(self, num_layers: int, head_dim: int) -> None:
        self.head_dim = head_dim
        self.mask: torch.Tensor | None = None
        self.influence = [0.0] * num_layers
        self.influence_tokens = [0] * num_layers
        self.heads: list[torch.Tensor | None] = [None] * num_layers
        self.mlp: list[torch.Tensor | None] = [None] * num_layers
        self.hidden: torch.Tensor | None = None

    @staticmethod
    def _add(total: torch.Tensor | None, per_sample: torch.Tensor) -> torch.Tensor:
        squares = per_sample.pow(2).sum(dim=0)
        return squares if total is None else total + squares

    def layer_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            inputs = args[0] if args else kwargs["hidden_states"]
            outputs = output[0] if isinstance(output, tuple) else output
            total, count = block_influence_sums(inputs, outputs, self.mask)
            self.influence[index] += total
            self.influence_tokens[index] += count
        return hook

    def heads_hook(self, index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            self.heads[index] = self._add(self.heads[index], head_means(args[0], self.head_dim, self.mask))
        return hook

    def mlp_hook(self, index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            self.mlp[index] = self._add(self.mlp[index], channel_means(args[0], self.mask))
        return hook

    def norm_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.hidden = self._add(self.hidden, channel_means(output, self.mask))


def calibrate(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *, total: int | None = None,
              progress: bool = True, description: str = "calibrating") -> ImportanceScores:
    """Return the importance scores of ``model`` measured on ``batches``, one forward pass per batch.

    :param model: a supported Hugging Face model (:func:`distill_core.students.families.family_of`).
    :param batches: dicts of model inputs (``input_ids``, ``attention_mask``...); the attention mask
        (1 = a real token) marks the tokens the scores average over.
    :param total: the number of batches, for the progress bar.
    :param progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    family = family_of(model)
    layers = family.layers(model)
    accumulator = _Accumulator(len(layers), family.head_dim(model.config))
    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(accumulator.layer_hook(index), with_kwargs=True))
        handles.append(family.attention_output(layer).register_forward_pre_hook(accumulator.heads_hook(index)))
        handles.append(family.mlp_output(layer).register_forward_pre_hook(accumulator.mlp_hook(index)))
        for norm in family.layer_norms(layer):
            handles.append(norm.register_forward_hook(accumulator.norm_hook))
    for norm in family.outer_norms(model):
        handles.append(norm.register_forward_hook(accumulator.norm_hook))
    samples = tokens = count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, total=total, desc=description, unit="batch", disable=not progress):
                inputs = dict(batch)
                inputs.pop("labels", None)
                mask = inputs.get("attention_mask")
                accumulator.mask = mask if mask is not None else torch.ones_like(inputs["input_ids"])
                model(**inputs, **family.call_options)
                samples += int(accumulator.mask.shape[0])
                tokens += int(accumulator.mask.sum())
                count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not samples:
        raise ValueError("calibration needs at least one batch of text, got none")

    def rms(total_squares: torch.Tensor | None) -> torch.Tensor:
        return (total_squares / samples).sqrt()

    return ImportanceScores(
        block_influence=[value / max(n, 1) for value, n in zip(accumulator.influence, accumulator.influence_tokens)],
        heads=[rms(scores) for scores in accumulator.heads],
        mlp=[rms(scores) for scores in accumulator.mlp],
        hidden=rms(accumulator.hidden), samples=samples, tokens=tokens, batches=count)

