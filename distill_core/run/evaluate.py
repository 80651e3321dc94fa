"""The evaluation after training: held-out loss and perplexity, and agreement with the teacher.

At every position that counts (its target label is not -100), with the causal shift:

- loss: the mean next-token cross-entropy (nats per token); perplexity = exp(loss);
- top-1 agreement: the fraction of positions where the student's most likely next token is the
  teacher's (over the first ``vocab`` entries, the vocabulary both share).

The teacher's loss and perplexity are computed once, for reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def _next_token_view(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict each counted position, and those positions' targets."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    counted = (targets != -100) & batch["attention_mask"][:, 1:].bool()
    return logits[counted].float(), targets[counted]


@torch.no_grad()
def evaluate_held_out(
    student: nn.Module,
    teacher: nn.Module | None,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    vocab: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Return ``{"tokens", "student": {"loss", "perplexity"}, "teacher": {...}, "top1_agreement"}``."""
    was_training = student.training
    student.eval()
    totals = {"student": 0.0, "teacher": 0.0}
    agree = tokens = 0
    try:
        for batch in batches:
            batch = {key: value.to(device) for key, value in batch.items()}
            logits_S, targets = _next_token_view(student, batch)
            if not targets.numel():
                continue
            tokens += targets.numel()
            totals["student"] += F.cross_entropy(logits_S, targets, reduction="sum").item()
            if teacher is not None:
                logits_T, _ = _next_token_view(teacher, batch)
                totals["teacher"] += F.cross_entropy(logits_T, targets, reduction="sum").item()
                agree += (logits_S[:, :vocab].argmax(-1) == logits_T[:, :vocab].argmax(-1)).sum().item()
    finally:
        student.train(was_training)
    if not tokens:
        return {"tokens": 0}

    def scores(total: float) -> dict[str, float]:
        loss = total / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    results: dict[str, Any] = {"tokens": tokens, "student": scores(totals["student"])}
    if teacher is not None:
        results["teacher"] = scores(totals["teacher"])
        results["top1_agreement"] = agree / tokens
    return results


def format_results(results: dict[str, Any]) -> str:
    """One line per model, as the command prints them."""
    if not results.get("tokens"):
        return "evaluation: no held-out tokens"
    lines = [f"evaluation on {results['tokens']:,} held-out tokens:"]
    for role in ("student", "teacher"):
        if role in results:
            lines.append(f"  {role}: loss {results[role]['loss']:.4f}, perplexity {results[role]['perplexity']:,.2f}")
    if "top1_agreement" in results:
        lines.append(f"  top-1 agreement with the teacher: {results['top1_agreement']:.1%}")
    return "\n".join(lines)
