"""Token spans in UTF-8 bytes, from the character offsets fast tokenizers report.

Hugging Face fast tokenizers give each token a ``(start, end)`` span in *characters* of the
original text (``return_offsets_mapping=True``). Two tokenizers agree on bytes, not on characters
once a character is split (byte-level BPE splits ``東`` into byte tokens, each reported with the
whole character's span), so alignment works on byte offsets: a character's span is converted with
the text's cumulative UTF-8 lengths, one numpy pass per text, never a Python loop per token.

A token takes part in alignment when it is real (attention mask 1), is not a special token, and
covers at least one character: BOS/EOS/CLS/SEP carry the empty span ``(0, 0)``, so a special token
added by one tokenizer only is recognised without knowing its name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


def char_to_byte_table(text: str) -> np.ndarray:
    """Return ``table`` with ``table[c]`` = the UTF-8 byte offset of character ``c`` (length ``len(text) + 1``).

    UTF-8 takes 1 byte below U+0080, 2 below U+0800, 3 below U+10000 and 4 above; the table is the
    cumulative sum of those lengths, computed on the code points in one vectorised pass.
    """
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (code_points >= 0x80).astype(np.int64) + (code_points >= 0x800) + (code_points >= 0x10000)
    table = np.zeros(len(code_points) + 1, dtype=np.int64)
    np.cumsum(widths, out=table[1:])
    return table


@dataclass(frozen=True)
class ByteSpans:
    """One side's tokens of a batch as byte spans.

    :param starts: (B, L) int64, the first byte of each token (0 where not alignable).
    :param ends: (B, L) int64, one past the last byte of each token (0 where not alignable).
    :param alignable: (B, L) bool, True where the token takes part in alignment.
    :param text_bytes: (B,) int64, the UTF-8 length of each text.
    """

    starts: Tensor
    ends: Tensor
    alignable: Tensor
    text_bytes: Tensor


def byte_spans(
    texts: Sequence[str],
    offsets: Tensor | np.ndarray | Sequence[Any],
    *,
    attention_mask: Tensor | np.ndarray | Sequence[Any] | None = None,
    special_tokens_mask: Tensor | np.ndarray | Sequence[Any] | None = None,
) -> ByteSpans:
    """Return the byte spans of a batch of tokenised ``texts``.

    :param texts: the B texts that were tokenised.
    :param offsets: (B, L, 2) character offsets, as ``offset_mapping`` of a padded batch encoding.
    :param attention_mask: (B, L), 0 = padding; None: every position is a token.
    :param special_tokens_mask: (B, L), 1 = a special token (never aligned); None: only the
        empty span marks special tokens.
    """
    char_offsets = torch.as_tensor(np.asarray(offsets), dtype=torch.int64)
    if char_offsets.ndim != 3 or char_offsets.shape[-1] != 2 or char_offsets.shape[0] != len(texts):
        raise ValueError(
            f"Expected argument `offsets` of shape (B, L, 2) with B = {len(texts)} texts but got shape "
            f"{tuple(char_offsets.shape)}"
        )
    batch, length = char_offsets.shape[:2]
    tables = [char_to_byte_table(text) for text in texts]
    # one padded table per batch, so the lookup of every token is a single gather
    width = max(len(table) for table in tables)
    padded = np.zeros((batch, width), dtype=np.int64)
    for row, table in enumerate(tables):
        padded[row, : len(table)] = table
        padded[row, len(table) :] = table[-1]
    lookup = torch.from_numpy(padded)
    char_offsets = char_offsets.clamp(0, width - 1)
    starts = lookup.gather(1, char_offsets[..., 0])
    ends = lookup.gather(1, char_offsets[..., 1])
    alignable = ends > starts
    if attention_mask is not None:
        alignable &= torch.as_tensor(np.asarray(attention_mask)).reshape(batch, length).bool()
    if special_tokens_mask is not None:
        alignable &= ~torch.as_tensor(np.asarray(special_tokens_mask)).reshape(batch, length).bool()
    zero = torch.zeros_like(starts)
    text_bytes = torch.tensor([int(table[-1]) for table in tables], dtype=torch.int64)
    return ByteSpans(
        starts=torch.where(alignable, starts, zero),
        ends=torch.where(alignable, ends, zero),
        alignable=alignable,
        text_bytes=text_bytes,
    )


def split_character_ends(spans: ByteSpans, token_ids: Tensor, key_lengths: Tensor) -> ByteSpans:
    """Return ``spans`` with exact byte ends for tokens that split one character between them.

    Byte-level tokens that each hold part of a character all report that character's end. Within
    such a run of equal ends, token t really ends ``Σ len(u)`` bytes earlier, summed over the run's
    later tokens u, with ``len`` the byte length of each token's text (its vocabulary key). Runs are
    found without a loop: the ends made non-decreasing (``cummax``) are searched for themselves, which
    gives each token the last index of its run, and the later lengths come from a cumulative sum.

    :param token_ids: (B, L) the token ids.
    :param key_lengths: (V,) the byte length of each id's text.
    """
    lengths = torch.where(spans.alignable, key_lengths[token_ids.clamp(0, key_lengths.numel() - 1)], 0)
    running_ends = spans.ends.cummax(1).values
    last_of_run = torch.searchsorted(running_ends, running_ends, right=True) - 1
    cumulative = lengths.cumsum(1)
    later = cumulative.gather(1, last_of_run) - cumulative
    ends = torch.where(spans.alignable, spans.ends - later, spans.ends)
    return ByteSpans(spans.starts.minimum(ends), ends, spans.alignable, spans.text_bytes)


__all__ = ["ByteSpans", "byte_spans", "char_to_byte_table", "split_character_ends"]
