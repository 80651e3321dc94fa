"""Chunked token-level KD; the implementation lives in :mod:`distill_core.terms.token_kd`.

Kept so code that imports ``distill_core.token_kd`` (its documented home until the loss terms
became one package) works unchanged.
"""

from distill_core.terms.token_kd import (
    DEFAULT_CHUNK_ELEMENTS,
    RowKdLoss,
    TeacherChunk,
    chunked_token_kd,
    default_chunk_size,
    kd_loss_for_rows,
    teacher_logits_from_head,
)

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "RowKdLoss",
    "TeacherChunk",
    "chunked_token_kd",
    "default_chunk_size",
    "kd_loss_for_rows",
    "teacher_logits_from_head",
]
