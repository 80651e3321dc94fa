"""Cross-tokenizer distillation: align two tokenizations of one text, match two vocabularies.

- :mod:`~distill_core.cross_tokenizer.offsets`: token spans in UTF-8 bytes.
- :mod:`~distill_core.cross_tokenizer.alignment`: groups of tokens covering the same bytes.
- :mod:`~distill_core.cross_tokenizer.vocabulary`: token keys, exact matches, the projection.
- :mod:`~distill_core.cross_tokenizer.groups`: chained group distributions.
- :mod:`~distill_core.cross_tokenizer.causal`: the groups of a causal LM's next-token rows.
- :mod:`~distill_core.cross_tokenizer.source`: the teacher source of a cross-tokenizer run.
- :mod:`~distill_core.cross_tokenizer.bits`: bits per byte, a tokenizer-free held-out loss.

The losses over aligned groups are plugins of kind ``aligned_kd_loss``
(:mod:`distill_plugins_losses.cross_tokenizer`). See docs/cross-tokenizer.md.
"""

from __future__ import annotations

from distill_core.cross_tokenizer.alignment import (
    kept_groups,
    token_byte_spans,
    TokenAlignment,
    align_byte_ends,
    align_encodings,
    align_positions,
    align_texts,
    encode_for_alignment,
)
from distill_core.cross_tokenizer.bits import bits_per_byte
from distill_core.cross_tokenizer.causal import next_token_alignment, predicted_tokens
from distill_core.cross_tokenizer.groups import group_log_probs
from distill_core.cross_tokenizer.offsets import ByteSpans, byte_spans, char_to_byte_table, split_character_ends
from distill_core.cross_tokenizer.vocabulary import VocabularyPair, detect_style, token_key, vocabulary_keys

__all__ = [
    "ByteSpans",
    "TokenAlignment",
    "VocabularyPair",
    "align_byte_ends",
    "align_encodings",
    "align_positions",
    "align_texts",
    "bits_per_byte",
    "byte_spans",
    "char_to_byte_table",
    "detect_style",
    "encode_for_alignment",
    "group_log_probs",
    "kept_groups",
    "next_token_alignment",
    "predicted_tokens",
    "split_character_ends",
    "token_byte_spans",
    "token_key",
    "vocabulary_keys",
]
