"""Bits per byte: a language model's held-out loss in a unit that does not depend on its tokenizer.

Per-token perplexity compares models only when they cut text the same way. Bits per byte divides
the total negative log-likelihood of a text, in bits, by its UTF-8 length, so a teacher and a
student with different tokenizers are measured on one scale::

    bpb = Σ_texts Σ_{t scored} −log₂ p(x_t | x_<t)  /  Σ_texts len(text.encode("utf-8"))

Every token of the text is scored from the tokens before it. A tokenizer that adds no leading
special token gets ``bos_token_id`` put in front (when it has one), so the first token is scored
too; without a BOS the first token has no context and is left unscored (its bytes still count, so
the value is then slightly low). ``bos_token_id=`` picks another token (or None: no BOS): SmolLM2's
tokenizer names ``<|im_start|>``, its chat template's turn marker, as BOS, while its plain
pretraining text follows ``<|endoftext|>`` (id 0), which is the fairer context for scoring prose.
Special tokens after the start (EOS, padding) are not scored: they
cover no byte of the text (the unknown token does, and is scored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


#: ``bits_per_byte(bos_token_id=...)``'s default: the tokenizer's own ``bos_token_id``
FROM_TOKENIZER: Any = "from_tokenizer"


@torch.no_grad()
def bits_per_byte(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8,
                  bos_token_id: int | None = FROM_TOKENIZER) -> float:
    """Return the bits per UTF-8 byte of ``texts`` under the causal LM ``model`` (see the module docstring).

    :param model: a causal LM called as ``model(input_ids=..., attention_mask=...)`` returning ``logits``.
    :param tokenizer: its Hugging Face tokenizer.
    :param texts: the held-out texts.
    :param batch_size: texts per forward pass.
    :param bos_token_id: the token put in front of a text whose encoding starts with no special
        token; default: ``tokenizer.bos_token_id``; None: none (the first token is not scored).
    """
    if isinstance(texts, str):
        raise TypeError("Expected argument `texts` to be a sequence of strings but got one string")
    if batch_size < 1:
        raise ValueError(f"Expected argument `batch_size` to be positive but got {batch_size}")
    total_bytes = sum(len(text.encode("utf-8")) for text in texts)
    if total_bytes == 0:
        raise ValueError("Expected argument `texts` to hold at least one byte of text but got none")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats = 0.0
    try:
        for start in range(0, len(texts), batch_size):
            input_ids, scored = _encode(tokenizer, texts[start : start + batch_size], bos_token_id)
            attention_mask = (input_ids != -1).long()
            input_ids = input_ids.clamp_min(0)
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            log_probs = logits[:, :-1].float().log_softmax(-1)
            chosen = log_probs.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            nats -= float(chosen[scored[:, 1:].to(device)].sum())
    finally:
        model.train(was_training)
    return nats / math.log(2) / total_bytes


def _encode(tokenizer: Any, texts: Sequence[str], bos: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (B, L) token ids right-padded with -1, and (B, L) bool: the tokens to score."""
    # the unknown token stands for bytes of the text and is scored; BOS, EOS and padding cover none
    special = set(getattr(tokenizer, "all_special_ids", ())) - {getattr(tokenizer, "unk_token_id", None)}
    if bos is FROM_TOKENIZER:
        bos = getattr(tokenizer, "bos_token_id", None)
    rows, scored_rows = [], []
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])
        if bos is not None and (not ids or ids[0] not in special):
            ids = [bos, *ids]
        rows.append(ids)
        # position 0 has no context; special tokens cover no byte of the text
        scored_rows.append([index > 0 and token not in special for index, token in enumerate(ids)])
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), length), -1, dtype=torch.long)
    scored = torch.zeros(len(rows), length, dtype=torch.bool)
    for row, (ids, flags) in enumerate(zip(rows, scored_rows)):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        scored[row, : len(ids)] = torch.tensor(flags, dtype=torch.bool)
    return input_ids, scored


__all__ = ["bits_per_byte"]
