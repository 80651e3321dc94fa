"""BoundAdaptor: a user's adaptor, or the automatic one for a model, with its call convention fixed once."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from distill_core.adaptors.auto import auto_adaptor_for
from distill_core.adaptors.contract import Adaptor, auto_adaptor


class BoundAdaptor:
    """An adaptor with its call convention (``task`` or not) decided once.

    :param model: when given and ``adaptor`` is None, the automatic adaptor is chosen by the
        model's kind (:func:`~distill_core.adaptors.auto.auto_adaptor_for`); without it,
        :func:`~distill_core.adaptors.contract.auto_adaptor`.
    :param chunked: with ``model``: chunked token KD (causal LMs).

    ``model_kwargs`` and ``model_batch(batch)`` say how to call the model for this adaptor (the
    automatic adaptors' own; empty and unchanged for a user's function).
    """

    def __init__(
        self, adaptor: Adaptor | None, role: str, *, model: nn.Module | None = None, chunked: bool = False
    ) -> None:
        self.role = role
        if adaptor is None and model is not None:
            adaptor = auto_adaptor_for(model, chunked=chunked)
        self.function = auto_adaptor if adaptor is None else adaptor
        if not callable(self.function):
            raise TypeError(f"{role} must be a callable adaptor(batch, model_outputs) or None, got {adaptor!r}")
        try:
            parameters = inspect.signature(self.function).parameters
        except (TypeError, ValueError):
            parameters = {}
        self.takes_task = "task" in parameters
        self._model_kwargs = dict(getattr(self.function, "model_kwargs", {}))  # fixed once chosen
        self._model_batch = getattr(self.function, "model_batch", None)  # looked up once, not per step

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self._model_kwargs)

    def model_batch(self, batch: Any) -> Any:
        return batch if self._model_batch is None else self._model_batch(batch)

    def call_args(self, model_args: Mapping[str, Any]) -> Mapping[str, Any]:
        """The keyword arguments of the model call: the user's, with the adaptor's own over them."""
        extra = self._model_kwargs
        return {**model_args, **extra} if extra else model_args

    def __call__(self, batch: Any, outputs: Any, task: str | None) -> Mapping[str, Any]:
        if self.takes_task:
            return self.function(batch, outputs, task=task)
        return self.function(batch, outputs)
