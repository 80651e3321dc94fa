"""Alignment of two causal LMs' next-token predictions: the groups over ``logits[:, :-1]``.

A causal LM's logits row ``t`` predicts token ``t + 1``. The aligned losses read row ``t`` as the
distribution of token ``t`` of the aligned sequence (:mod:`~distill_core.cross_tokenizer.groups`),
so the alignment of the whole encodings is shifted by one: token ids and group ids from position 1
on, paired with ``logits[:, :-1]``. A token no row predicts (the first real token of a text, when
no BOS precedes it) is dropped by the loss mask, so its group is left out of the loss but keeps its
bytes; padding and tokens whose label is -100 are dropped the same way. With one tokenizer on both
sides the kept groups are exactly the positions the causal-LM adaptor's ``logits_mask`` keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from distill_core.cross_tokenizer.alignment import TokenAlignment, align_encodings

if TYPE_CHECKING:
    from distill_core.cross_tokenizer.vocabulary import VocabularyPair


def predicted_tokens(attention_mask: Tensor, labels: Tensor | None = None) -> Tensor:
    """Return (B, L) bool: the tokens a causal LM's previous row predicts and the loss counts.

    A token counts when it and the token before it are real (attention 1) and its label is not
    -100; the first position never counts (no row predicts it).
    """
    real = attention_mask.bool()
    keep = torch.zeros_like(real)
    keep[:, 1:] = real[:, 1:] & real[:, :-1]
    if labels is not None:
        keep &= labels.to(keep.device) != -100
    return keep


def next_token_alignment(
    texts: Sequence[str],
    encoding_S: Any,
    encoding_T: Any,
    *,
    labels_S: Tensor | None = None,
    vocabularies: VocabularyPair | None = None,
) -> TokenAlignment:
    """Return the groups of two causal LMs' ``logits[:, :-1]`` rows (see the module docstring).

    :param encoding_S: the student's padded encoding of ``texts`` with ``offset_mapping``
        (:func:`~distill_core.cross_tokenizer.encode_for_alignment`).
    :param encoding_T: the teacher's.
    :param labels_S: (B, L_S) the student's labels: -100 drops a token's group from the loss.
    :param vocabularies: the run's :class:`VocabularyPair`, attached for the losses.
    """
    whole = align_encodings(
        texts,
        encoding_S,
        encoding_T,
        loss_mask_S=predicted_tokens(torch.as_tensor(encoding_S["attention_mask"]), labels_S),
        loss_mask_T=predicted_tokens(torch.as_tensor(encoding_T["attention_mask"])),
        vocabularies=vocabularies,
    )
    return replace(
        whole,
        group_ids_S=whole.group_ids_S[:, 1:],
        group_ids_T=whole.group_ids_T[:, 1:],
        token_ids_S=None if whole.token_ids_S is None else whole.token_ids_S[:, 1:],
        token_ids_T=None if whole.token_ids_T is None else whole.token_ids_T[:, 1:],
    )


__all__ = ["next_token_alignment", "predicted_tokens"]
