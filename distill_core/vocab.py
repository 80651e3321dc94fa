"""Teacher and student vocabularies must agree before token-level KD compares their logits.

Token KD pairs the teacher's probability for token id ``i`` with the student's for the same id, so
both models need the same output size and, when tokenizers are given, the same token behind each
id. The distiller calls :func:`check_vocabularies` at setup, before any step runs.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill_core.adaptors import model_kind, output_head
from distill_core.errors import DistillError
from distill_core.modules import unwrap


#: how to distil anyway when the two tokenizers really differ
CROSS_TOKENIZER_HINT = (
    "To distil between different tokenizers, set DistillationConfig.cross_tokenizer={'loss': 'gold'} (or "
    "'xtoken') and pass tokenizer_T and tokenizer_S: KD then compares aligned token groups "
    "(docs/cross-tokenizer.md)"
)


class VocabularyMismatchError(DistillError, ValueError):
    """Teacher and student vocabularies differ (size, or the token behind an id)."""


def output_vocab_size(model: nn.Module) -> int | None:
    """Return the number of token logits a language model outputs, or None for other models.

    The rows of ``get_output_embeddings().weight``, else ``config.vocab_size`` for a model that
    :func:`~distill_core.adaptors.model_kind` calls a causal LM or an encoder-decoder.
    Classifiers give None: their outputs are classes, not a vocabulary.
    """
    head = output_head(model)
    if head is not None:
        return int(head.weight.shape[0])
    inner = unwrap(model)
    size = getattr(getattr(inner, "config", None), "vocab_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and model_kind(inner) != "other":
        return size
    return None


def _id_to_token(tokenizer: Any, role: str) -> dict[int, str]:
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if not callable(get_vocab):
        raise TypeError(
            f"{role} must be a tokenizer with get_vocab() (a Hugging Face tokenizer), got {type(tokenizer).__name__}"
        )
    return {int(index): token for token, index in get_vocab().items()}


def _check_tokenizers(tokenizer_T: Any, tokenizer_S: Any, compared: int | None, explicit: bool) -> None:
    tokens_T, tokens_S = _id_to_token(tokenizer_T, "tokenizer_T"), _id_to_token(tokenizer_S, "tokenizer_S")
    if compared is None:
        compared = max(max(tokens_T, default=-1), max(tokens_S, default=-1)) + 1
    for index in range(compared):
        token_T, token_S = tokens_T.get(index), tokens_S.get(index)
        if token_T == token_S:
            continue
        fix = (
            "both models must be trained with the same tokenizer (the teacher's)"
            if explicit
            else "both models must be trained with the same tokenizer; if only ids past the shared vocabulary "
            "differ (added tokens, padding), set DistillationConfig.kd_vocab_size=N to compare the first N ids only"
        )
        raise VocabularyMismatchError(
            f"tokenizer_T and tokenizer_S differ at id {index}: the teacher's token is {token_T!r}, the "
            f"student's {token_S!r} (None: no token has that id); token KD compares the same ids, so {fix}. "
            f"{CROSS_TOKENIZER_HINT}"
        )


def check_vocabularies(
    model_T: nn.Module,
    model_S: nn.Module,
    *,
    tokenizer_T: Any = None,
    tokenizer_S: Any = None,
    vocab_size: int | None = None,
) -> int | None:
    """Check that teacher and student share a vocabulary; return how many entries KD compares.

    Output sizes (:func:`output_vocab_size`) must be equal; models that are not language models
    (no vocabulary, e.g. classifiers) are skipped. ``vocab_size=N`` (the distiller passes
    ``DistillationConfig.kd_vocab_size``, the name the messages give) is for a padded vocabulary
    (output sizes rounded up, e.g. to a multiple of 64): only the first N entries are compared,
    both models need at least N outputs, and KD is to use ``logits[..., :N]``. Tokenizers, when
    both are given, must map the same id to the same token over the compared ids.

    :returns: N, or the shared output size, or None when neither model has a vocabulary.
    :raises VocabularyMismatchError: sizes or tokens differ, naming both and the fix.
    """
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
        raise ValueError(f"Expected argument `vocab_size` to be a positive integer but got {vocab_size!r}")
    if (tokenizer_T is None) != (tokenizer_S is None):
        raise ValueError("pass both tokenizer_T and tokenizer_S to compare vocabularies, or neither")
    size_T, size_S = output_vocab_size(model_T), output_vocab_size(model_S)
    both = size_T is not None and size_S is not None
    compared: int | None = None
    if vocab_size is not None:
        for role, size in (("teacher", size_T), ("student", size_S)):
            if size is not None and size < vocab_size:
                raise VocabularyMismatchError(
                    f"kd_vocab_size={vocab_size} is larger than the {role}'s output size {size}; the shared vocabulary "
                    f"can have at most {min(s for s in (size_T, size_S) if s is not None)} entries"
                )
        compared = vocab_size
    elif both:
        if size_T != size_S:
            raise VocabularyMismatchError(
                f"the teacher outputs {size_T} token logits and the student {size_S}; token KD needs one vocabulary. "
                f"Use a student built with the teacher's tokenizer, or, if one output layer is only padded (its "
                f"first N entries are the same tokens), set DistillationConfig.kd_vocab_size=N to compare those. "
                f"{CROSS_TOKENIZER_HINT}"
            )
        compared = size_T
    if tokenizer_T is not None:
        _check_tokenizers(tokenizer_T, tokenizer_S, compared, explicit=vocab_size is not None)
    return compared if both or vocab_size is not None else None
