"""Dev accuracy and CPU latency of a classifier."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
import torch
from torch import nn


@torch.inference_mode()
def accuracy(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], *, progress: str | None = None) -> float:
    """Return the fraction of examples whose argmax logit equals ``labels`` (the model is left in eval mode).

    :param progress: show a progress bar with this description while evaluating (e.g.
        ``"dev accuracy"``), so a long evaluation does not look like a frozen run; None: no bar.
    """
    model.eval()
    correct = total = 0
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        dataset = getattr(loader, "dataset", None)
        bar = tqdm(total=len(dataset) if dataset is not None else None, desc=progress, unit="ex",
                   leave=False, dynamic_ncols=True)
    try:
        for batch in loader:
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            predictions = model(**inputs, output_hidden_states=False).logits.argmax(dim=-1)
            correct += int((predictions == batch["labels"]).sum())
            total += len(predictions)
            if bar is not None:
                bar.update(len(predictions))
    finally:
        if bar is not None:
            bar.close()
    return correct / total if total else float("nan")


@torch.inference_mode()
def latency_ms(model: nn.Module, encoded: Sequence[Sequence[int]], *, warmup: int = 5) -> float:
    """Return the median milliseconds to classify one example, one at a time (batch size 1, no padding).

    This is what an application serving single requests on the CPU sees; the median ignores the
    occasional slow call caused by other processes.
    """
    model.eval()
    timings = []
    for index, ids in enumerate([*encoded[:warmup], *encoded]):
        input_ids = torch.tensor([list(ids)])
        start = time.perf_counter()
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_hidden_states=False)
        if index >= warmup:
            timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def describe(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``81.2%`` for one value; ``81.2% (80.9, 81.5)`` for several (mean, then each)."""
    text = f"{mean(values) * scale:.{digits}f}%"
    if len(values) > 1:
        text += " (" + ", ".join(f"{v * scale:.{digits}f}" for v in values) + ")"
    return text
