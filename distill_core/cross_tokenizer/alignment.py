"""Group the tokens of two tokenizations of the same text where both end at the same byte.

Two tokenizers cut a text at different places. A *group* is a run of consecutive tokens on each
side covering the same bytes: a group closes at every UTF-8 byte offset where a token of each side
ends. With ``b_0 < b_1 < ...`` the byte ends shared by both sides, group ``g`` covers the bytes
``[b_{g-1}, b_g)`` (``b_{-1} = 0``), and a token belongs to group ``g`` when its byte end ``e``
satisfies ``b_{g-1} < e <= b_g``. Several byte-level tokens that split one character all report
that character's span, so they share its end and fall into the same group.

Everything is vectorised over the batch: each (example, byte end) pair becomes one integer key
``example * stride + end``; the shared ends are the keys of one side found among the other's
(``torch.isin``), and a token's group is the number of shared keys below its own
(``torch.searchsorted``) minus the number in earlier examples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from distill_core.cross_tokenizer.offsets import ByteSpans, byte_spans, split_character_ends

if TYPE_CHECKING:
    from distill_core.cross_tokenizer.vocabulary import VocabularyPair


@dataclass(frozen=True)
class TokenAlignment:
    """The token groups of a batch tokenised by a student's and a teacher's tokenizer.

    :param group_ids_S: (B, L_S) int64, the group of each student token; -1 for none (padding,
        special tokens, tokens past the last shared byte end).
    :param group_ids_T: (B, L_T) int64, the same for the teacher's tokens.
    :param num_groups: (B,) int64, the number of groups of each example.
    :param group_mask: (B, G) bool, G = the largest number of groups: True for a group that exists
        and whose tokens are all kept by the loss masks (labels != -100) on both sides.
    :param group_ends: (B, G) int64, the byte end of each group (group g covers
        ``[group_ends[g-1], group_ends[g])``); zeros under the positional fallback.
    :param token_ids_S: (B, L_S) the student's token ids (what chaining reads), or None.
    :param token_ids_T: (B, L_T) the teacher's token ids, or None.
    :param vocabularies: the matched vocabularies the losses use, or None.
    :param positional: True when the groups come from the positional fallback (no byte offsets).
    """

    group_ids_S: Tensor
    group_ids_T: Tensor
    num_groups: Tensor
    group_mask: Tensor
    group_ends: Tensor
    token_ids_S: Tensor | None = None
    token_ids_T: Tensor | None = None
    vocabularies: VocabularyPair | None = None
    positional: bool = False

    @property
    def max_groups(self) -> int:
        """G, the group axis of :attr:`group_mask`."""
        return int(self.group_mask.shape[1])

    def with_vocabularies(self, vocabularies: VocabularyPair) -> TokenAlignment:
        """Return this alignment carrying ``vocabularies`` (built once per run, shared by every batch)."""
        return replace(self, vocabularies=vocabularies)

    def to(self, device: torch.device | str) -> TokenAlignment:
        """Return the alignment with its tensors on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("group_ids_S", "group_ids_T", "num_groups", "group_mask", "group_ends")
        }
        for name in ("token_ids_S", "token_ids_T"):
            value = getattr(self, name)
            moved[name] = None if value is None else value.to(device)
        return replace(self, **moved)


def align_byte_ends(
    ends_S: Tensor,
    alignable_S: Tensor,
    ends_T: Tensor,
    alignable_T: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``(group_ids_S, group_ids_T, num_groups, group_ends)`` from two sides' byte ends.

    :param ends_S: (B, L_S) int64 byte end of each student token.
    :param alignable_S: (B, L_S) bool, the tokens that take part.
    :param ends_T: (B, L_T) int64 byte end of each teacher token.
    :param alignable_T: (B, L_T) bool.
    """
    batch = ends_S.shape[0]
    device = ends_S.device
    zero = torch.zeros(1, dtype=ends_S.dtype, device=device)
    stride = int(torch.cat([ends_S.flatten(), ends_T.flatten(), zero]).max()) + 1
    example = torch.arange(batch, device=device).unsqueeze(1)
    keys_S = example * stride + ends_S
    keys_T = example * stride + ends_T
    candidates = keys_S[alignable_S]
    shared = torch.unique(candidates[torch.isin(candidates, keys_T[alignable_T])])  # sorted
    first_of_example = torch.searchsorted(shared, torch.arange(batch + 1, device=device) * stride)
    num_groups = first_of_example[1:] - first_of_example[:-1]

    def group_ids(keys: Tensor, alignable: Tensor) -> Tensor:
        position = torch.searchsorted(shared, keys)
        inside = alignable & (position < first_of_example[1:].unsqueeze(1))
        return torch.where(inside, position - first_of_example[:-1].unsqueeze(1), torch.full_like(position, -1))

    max_groups = int(num_groups.max()) if batch else 0
    group_ends = torch.zeros(batch, max_groups, dtype=torch.int64, device=device)
    owner = torch.searchsorted(first_of_example, torch.arange(shared.numel(), device=device), right=True) - 1
    group_ends[owner, torch.arange(shared.numel(), device=device) - first_of_example[owner]] = shared - owner * stride
    return group_ids(keys_S, alignable_S), group_ids(keys_T, alignable_T), num_groups, group_ends


def align_positions(alignable_S: Tensor, alignable_T: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return the positional fallback: the i-th alignable token of each side forms group i.

    Groups stop at the shorter side (as ULD, Boizard et al. 2024, pairs positions); they need not
    cover the same bytes, which is why :func:`align_encodings` warns when it falls back to this.
    """
    rank_S = alignable_S.long().cumsum(1) - 1
    rank_T = alignable_T.long().cumsum(1) - 1
    num_groups = torch.minimum(alignable_S.sum(1), alignable_T.sum(1))
    limit = num_groups.unsqueeze(1)
    group_ids_S = torch.where(alignable_S & (rank_S < limit), rank_S, torch.full_like(rank_S, -1))
    group_ids_T = torch.where(alignable_T & (rank_T < limit), rank_T, torch.full_like(rank_T, -1))
    max_groups = int(num_groups.max()) if num_groups.numel() else 0
    group_ends = torch.zeros(alignable_S.shape[0], max_groups, dtype=torch.int64, device=alignable_S.device)
    return group_ids_S, group_ids_T, num_groups, group_ends


def kept_groups(
    group_ids: Sequence[Tensor], loss_masks: Sequence[Tensor | None], num_groups: Tensor
) -> Tensor:
    """Return (B, G) bool: the groups that exist and hold no token a loss mask drops, on every side."""
    max_groups = int(num_groups.max()) if num_groups.numel() else 0
    exists = torch.arange(max_groups, device=num_groups.device).unsqueeze(0) < num_groups.unsqueeze(1)
    dropped = torch.zeros(exists.shape, dtype=torch.int64, device=num_groups.device)
    for ids, mask in zip(group_ids, loss_masks):
        if mask is None:
            continue
        counted = (ids >= 0) & ~mask.to(device=ids.device).bool()
        # tokens in no group go to a spare column that is cut off afterwards
        column = torch.where(ids >= 0, ids, torch.full_like(ids, max_groups))
        spare = torch.zeros(exists.shape[0], max_groups + 1, dtype=torch.int64, device=ids.device)
        dropped += spare.scatter_add_(1, column, counted.long())[:, :max_groups]
    return exists & (dropped == 0)


def _encoding_field(encoding: Any, name: str) -> Any:
    try:
        return encoding[name]
    except (KeyError, TypeError):
        return getattr(encoding, name, None)


def _alignable_without_offsets(encoding: Any) -> Tensor:
    ids = torch.as_tensor(_encoding_field(encoding, "input_ids"))
    alignable = torch.ones(ids.shape, dtype=torch.bool)
    for name, keep_where in (("attention_mask", 1), ("special_tokens_mask", 0)):
        value = _encoding_field(encoding, name)
        if value is not None:
            alignable &= torch.as_tensor(value).bool() == bool(keep_where)
    return alignable


def token_byte_spans(texts: Sequence[str], encoding: Any, *, key_lengths: Tensor | None = None) -> ByteSpans | None:
    """Return the byte spans of an encoding's tokens, or None when it has no ``offset_mapping``.

    :param key_lengths: (V,) the byte length of each token id's text
        (:meth:`VocabularyPair.key_lengths`); with it, tokens that split one character get their
        exact byte ends (:func:`split_character_ends`), else they share the character's end.
    """
    offsets = _encoding_field(encoding, "offset_mapping")
    if offsets is None:
        return None
    spans = byte_spans(
        texts,
        offsets,
        attention_mask=_encoding_field(encoding, "attention_mask"),
        special_tokens_mask=_encoding_field(encoding, "special_tokens_mask"),
    )
    if key_lengths is None:
        return spans
    return split_character_ends(spans, torch.as_tensor(_encoding_field(encoding, "input_ids")), key_lengths)


def align_encodings(
    texts: Sequence[str],
    encoding_S: Any,
    encoding_T: Any,
    *,
    loss_mask_S: Tensor | None = None,
    loss_mask_T: Tensor | None = None,
    vocabularies: VocabularyPair | None = None,
) -> TokenAlignment:
    """Return the groups of ``texts`` as encoded by the student's and the teacher's tokenizer.

    :param texts: the B texts both encodings were made from.
    :param encoding_S: the student's padded batch encoding (a ``BatchEncoding`` or a dict) with
        ``input_ids``, ``attention_mask`` and ``offset_mapping``; ``special_tokens_mask`` is used
        when present.
    :param encoding_T: the teacher's, likewise.
    :param loss_mask_S: (B, L_S), 0 where the student's loss drops a token (``labels == -100``): a
        group holding such a token is masked (:attr:`TokenAlignment.group_mask`).
    :param loss_mask_T: (B, L_T), the same for the teacher.
    :param vocabularies: attached to the result for the losses (see :class:`VocabularyPair`).

    When either encoding has no ``offset_mapping`` (a slow tokenizer), the groups fall back to
    :func:`align_positions` with a warning: they then pair positions, not bytes. With
    ``vocabularies``, byte-level tokens that split a character get exact byte ends (so the same
    tokenizer on both sides gives one group per token); without, they share one group.
    """
    lengths_S = None if vocabularies is None else vocabularies.key_lengths("S")
    lengths_T = None if vocabularies is None else vocabularies.key_lengths("T")
    spans_S = token_byte_spans(texts, encoding_S, key_lengths=lengths_S)
    spans_T = token_byte_spans(texts, encoding_T, key_lengths=lengths_T)
    if spans_S is None or spans_T is None:
        missing = " and ".join(side for side, spans in (("student", spans_S), ("teacher", spans_T)) if spans is None)
        warnings.warn(
            f"the {missing} encoding has no offset_mapping (a slow tokenizer?), so tokens are paired by "
            f"position, not by the bytes they cover; use a fast tokenizer (return_offsets_mapping=True) "
            f"for byte-aligned groups",
            stacklevel=2,
        )
        groups = align_positions(_alignable_without_offsets(encoding_S), _alignable_without_offsets(encoding_T))
    else:
        groups = align_byte_ends(spans_S.ends, spans_S.alignable, spans_T.ends, spans_T.alignable)
    group_ids_S, group_ids_T, num_groups, group_ends = groups
    ids_S, ids_T = _encoding_field(encoding_S, "input_ids"), _encoding_field(encoding_T, "input_ids")
    return TokenAlignment(
        group_ids_S=group_ids_S,
        group_ids_T=group_ids_T,
        num_groups=num_groups,
        group_mask=kept_groups((group_ids_S, group_ids_T), (loss_mask_S, loss_mask_T), num_groups),
        group_ends=group_ends,
        token_ids_S=None if ids_S is None else torch.as_tensor(ids_S),
        token_ids_T=None if ids_T is None else torch.as_tensor(ids_T),
        vocabularies=vocabularies,
        positional=spans_S is None or spans_T is None,
    )


def encode_for_alignment(tokenizer: Any, texts: Sequence[str], **kwargs: Any) -> Any:
    """Return ``tokenizer(texts)`` padded, as tensors, with offsets (fast tokenizers) and the special-token mask."""
    return tokenizer(
        list(texts),
        padding=True,
        return_tensors="pt",
        return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)),
        return_special_tokens_mask=True,
        **kwargs,
    )


def align_texts(
    texts: Sequence[str],
    tokenizer_S: Any,
    tokenizer_T: Any,
    *,
    vocabularies: VocabularyPair | None = None,
    **tokenizer_kwargs: Any,
) -> TokenAlignment:
    """Tokenise ``texts`` with both tokenizers and return their groups (:func:`align_encodings`).

    ``tokenizer_kwargs`` (``add_special_tokens``, ``truncation``, ``max_length``) go to both tokenizers.
    """
    return align_encodings(
        texts,
        encode_for_alignment(tokenizer_S, texts, **tokenizer_kwargs),
        encode_for_alignment(tokenizer_T, texts, **tokenizer_kwargs),
        vocabularies=vocabularies,
    )


__all__ = [
    "TokenAlignment",
    "align_byte_ends",
    "align_encodings",
    "align_positions",
    "align_texts",
    "encode_for_alignment",
    "kept_groups",
    "token_byte_spans",
]
