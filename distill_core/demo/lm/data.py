"""The LM demo's text: BBC News articles cut into fixed-length token blocks, train and held-out.

The articles are those of the classification demo's ``bbc`` split (:func:`distill_core.demo.data.bbc_pools`):
the 1,698 train-pool articles give the training blocks, the 427 dev-pool articles the held-out
blocks, so no held-out article is ever trained on. Each article (headline, then body) is tokenised
on its own and cut into consecutive windows of ``block_size`` tokens; the last, shorter piece is
dropped, so every block is real text from one article, no block needs padding and none straddles
two articles. The blocks of each part are shuffled once with ``random.Random(SPLIT_SEED)`` and the
sizes take prefixes, so a larger set holds every smaller one and the held-out set never depends on
the training size.

Each block is a dataset example with a stable index (its position in the part), which is what a
teacher-output cache keys its entries by.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch.utils.data import DataLoader

from distill_core.adaptors import IGNORE_INDEX
from distill_core.demo.batches import EncodedDataset, pad_batch
from distill_core.demo.data import SPLIT_SEED, bbc_pools


@dataclass(frozen=True)
class BlockPools:
    """Every block of the train and held-out articles, each part in its fixed shuffled order."""

    block_size: int
    train: list[list[int]]
    held_out: list[list[int]]


def cut_blocks(token_ids: Sequence[Sequence[int]], block_size: int) -> list[list[int]]:
    """Return the consecutive full ``block_size`` windows of each sequence, in order (remainders dropped).

    >>> cut_blocks([[1, 2, 3, 4, 5], [6, 7]], 2)
    [[1, 2], [3, 4]]
    """
    if block_size < 2:
        raise ValueError(f"Expected argument `block_size` to be at least 2 (one next-token target) but got "
                         f"{block_size}")
    return [list(ids[start:start + block_size]) for ids in token_ids
            for start in range(0, len(ids) - block_size + 1, block_size)]


def _tokenise(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    # no special tokens: SmolLM2's tokenizer adds none to plain text, and a block is a window of prose
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=4)
def _pools(tokenizer: Any, block_size: int) -> BlockPools:
    train_pool, dev_pool = bbc_pools()
    parts = []
    for texts in (train_pool.texts, dev_pool.texts):
        blocks = cut_blocks(_tokenise(tokenizer, texts), block_size)
        random.Random(SPLIT_SEED).shuffle(blocks)
        parts.append(blocks)
    return BlockPools(block_size, parts[0], parts[1])


def block_pools(tokenizer: Any, *, block_size: int) -> BlockPools:
    """Return all train and held-out blocks of ``block_size`` tokens (tokenised once per tokenizer and size)."""
    return _pools(tokenizer, block_size)


def lm_splits(tokenizer: Any, *, block_size: int, train_size: int, eval_size: int) -> tuple[list[list[int]],
                                                                                             list[list[int]]]:
    """Return the first ``train_size`` train blocks and the first ``eval_size`` held-out blocks.

    :raises ValueError: when a size exceeds its pool, naming the option and the pool's size.
    """
    pools = block_pools(tokenizer, block_size=block_size)
    for option, size, pool in (("--train-size", train_size, pools.train), ("--eval-size", eval_size, pools.held_out)):
        if not 1 <= size <= len(pool):
            raise ValueError(f"{option} must be between 1 and {len(pool)} (the {block_size}-token blocks of its "
                             f"articles), got {size}")
    return pools.train[:train_size], pools.held_out[:eval_size]


def causal_lm_batch(examples: list[dict[str, Any]], *, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Collate blocks into ``input_ids``, ``attention_mask`` and ``labels`` (the input ids; -100 on padding).

    The labels make a Hugging Face causal LM return its own next-token loss (the student trained
    alone); distillation's automatic adaptor pairs them with the shifted logits.
    """
    batch = pad_batch([{"input_ids": example["input_ids"]} for example in examples], pad_token_id=pad_token_id)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    return batch


def block_loader(blocks: list[list[int]], *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Return a DataLoader over ``blocks``; with ``shuffle``, the order of each epoch comes from ``seed``."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(EncodedDataset(blocks), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=causal_lm_batch)
