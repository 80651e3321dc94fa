"""What the LM demo measures: held-out perplexity, top-1 agreement with the teacher, CPU time per token.

- Perplexity: ``exp`` of the mean next-token cross-entropy over every predicted position of the
  held-out blocks (a block of L tokens predicts L - 1).
- Top-1 agreement: the fraction of those positions where the model's most likely next token is the
  teacher's; how closely the student imitates the teacher, whatever the text says.
- Latency: the median time of one decoding step of greedy generation (batch 1, key/value cache),
  i.e. the time per generated token that a user of the model on this CPU waits.
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class HeldOut:
    """Held-out scores of one model: mean next-token loss (nats), perplexity, top-1 agreement, positions."""

    loss: float
    perplexity: float
    agreement: float | None
    positions: int


@torch.inference_mode()
def evaluate(model: nn.Module, blocks: Sequence[Sequence[int]], *, batch_size: int = 8,
             reference: torch.Tensor | None = None) -> tuple[HeldOut, torch.Tensor]:
    """Score ``model`` on equal-length ``blocks``; return the scores and its argmax predictions (N, L - 1).

    :param reference: the teacher's argmax predictions for the same blocks; with it, the top-1
        agreement is filled in.
    """
    model.eval()
    total, predictions = 0.0, []
    for start in range(0, len(blocks), batch_size):
        input_ids = torch.tensor([list(block) for block in blocks[start:start + batch_size]])
        logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
        targets = input_ids[:, 1:]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
        predictions.append(logits.argmax(dim=-1))
    predicted = torch.cat(predictions)
    positions = predicted.numel()
    loss = total / positions
    agreement = None if reference is None else float((predicted == reference).float().mean())
    return HeldOut(loss, math.exp(loss), agreement, positions), predicted


@dataclass
class Continuation:
    """A greedy continuation of the fixed prompt and the median milliseconds per generated token."""

    text: str
    ms_per_token: float
    timed_steps: int


def _cache_argument(model: nn.Module) -> str:
    """The name the model's forward gives its key/value cache (transformers 5 renamed ``past_key_values``)."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        parameters = {}
    return "cache" if "cache" in parameters else "past_key_values"


@torch.inference_mode()
def decode_greedy(model: nn.Module, input_ids: torch.Tensor, *, new_tokens: int,
                  warmup: int = 3) -> tuple[list[int], list[float]]:
    """Generate ``new_tokens`` greedily after ``input_ids`` (1, P) with the key/value cache.

    Return the generated ids and the milliseconds of each decoding step after the first ``warmup``
    (allocations, one-off kernel choices). No token stops the loop, so every model is timed over the
    same number of steps.
    """
    model.eval()
    argument = _cache_argument(model)
    outputs = model(input_ids=input_ids, use_cache=True)
    token = outputs.logits[:, -1].argmax(dim=-1, keepdim=True)
    tokens, timings = [int(token)], []
    for step in range(new_tokens - 1):
        cache = outputs[argument] if argument in outputs else outputs["past_key_values"]
        started = time.perf_counter()
        outputs = model(input_ids=token, use_cache=True, **{argument: cache})
        token = outputs.logits[:, -1].argmax(dim=-1, keepdim=True)
        if step >= warmup:
            timings.append((time.perf_counter() - started) * 1000)
        tokens.append(int(token))
    return tokens, timings


def greedy_continuations(models: Sequence[nn.Module], tokenizer: Any, prompt: str, *, new_tokens: int,
                         stop_ids: Sequence[int] = (), rounds: int = 3) -> list[Continuation]:
    """Continue ``prompt`` greedily with each model; time their decoding steps in interleaved rounds.

    On a shared machine the load changes from second to second; timing the models in turn,
    ``rounds`` times, lets each see the same mix of quiet and busy moments, so their ratio is
    fairer than back-to-back timings would give. The text is cut at the first of ``stop_ids``.
    """
    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    texts: list[str] = [""] * len(models)
    timings: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for index, model in enumerate(models):
            tokens, steps = decode_greedy(model, input_ids, new_tokens=new_tokens)
            timings[index].extend(steps)
            cut = next((position for position, value in enumerate(tokens) if value in stop_ids), len(tokens))
            texts[index] = prompt + tokenizer.decode(tokens[:cut], skip_special_tokens=True)
    return [Continuation(text, statistics.median(steps) if steps else float("nan"), len(steps))
            for text, steps in zip(texts, timings)]


class ForwardTimer:
    """Adds up the wall time spent inside a module's forward calls (the teacher's, during distillation).

    Once the teacher-output cache is on, the teacher runs only while the cache is built, and this
    is that build's time.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._started: float | None = None

    @contextmanager
    def attached(self, module: nn.Module) -> Iterator[ForwardTimer]:
        def before(*_: object) -> None:
            self._started = time.perf_counter()

        def after(*_: object) -> None:
            if self._started is not None:
                self.seconds += time.perf_counter() - self._started
                self.calls += 1
                self._started = None

        handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
