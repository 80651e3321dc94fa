"""Two vocabularies side by side: each token's text as bytes, the tokens both share, a projection.

Tokenizers spell the same text differently: byte-level BPE (GPT-2, SmolLM2, Llama 3) writes a
leading space as ``Ġ`` and every non-ASCII byte as another printable character; SentencePiece
(Llama 2, T5) writes the space as ``▁`` and unknown bytes as ``<0xE9>``; WordPiece (BERT, MiniLM)
has no space marker but marks word continuations with ``##``. Each token is turned into the bytes
it stands for in running text (its *key*), with the leading space as a real space byte, so ``Ġhello``,
``▁hello`` and a word-initial WordPiece ``hello`` all become ``b" hello"`` and ``##llo`` becomes
``b"llo"``. Special tokens keep their own name, behind a prefix that no text can produce.

Tokens whose keys occur in both vocabularies are *matched* (a class per shared key; several ids of
one vocabulary with the same key share its class); the others are *unmatched*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import Tensor

TokenStyle = Literal["byte_level", "metaspace", "wordpiece", "plain"]
#: bytes 0xFF 0xFE never occur in UTF-8 text, so a special token's key cannot equal a text's
SPECIAL_PREFIX = b"\xff\xfe"


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """Return the byte-level BPE alphabet: printable character -> the byte it stands for.

    Bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for
    themselves; the other 68 bytes (controls, space, ...) are given the characters from U+0100 on,
    in byte order, so the space (0x20) is ``Ġ`` (U+0120) and the newline ``Ċ``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {chr(byte): byte for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in printable:
            alphabet[chr(256 + extra)] = byte
            extra += 1
    return alphabet


def token_key(token: str, style: TokenStyle) -> bytes:
    """Return the bytes ``token`` stands for in running text, its leading space as ``b" "``."""
    if style == "byte_level":
        alphabet = byte_level_alphabet()
        if all(char in alphabet for char in token):
            return bytes(alphabet[char] for char in token)
        return token.encode("utf-8")  # an added token written in plain text
    if style == "metaspace":
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                return bytes([int(token[3:5], 16)])
            except ValueError:
                pass
        return token.replace("▁", " ").encode("utf-8")
    if style == "wordpiece":
        if token.startswith("##"):
            return token[2:].encode("utf-8")
        return b" " + token.encode("utf-8")  # a word-initial piece follows a space in running text
    return token.encode("utf-8")


def detect_style(tokenizer: Any) -> TokenStyle:
    """Return the spelling convention of ``tokenizer``'s vocabulary (its model, else its markers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = type(getattr(backend, "model", None)).__name__
    if model == "WordPiece":
        return "wordpiece"
    tokens = list(tokenizer.get_vocab())
    counts = {
        "byte_level": sum(token.startswith("Ġ") for token in tokens),
        "metaspace": sum(token.startswith("▁") for token in tokens),
        "wordpiece": sum(token.startswith("##") for token in tokens),
    }
    style, count = max(counts.items(), key=lambda item: item[1])
    return style if count > len(tokens) // 100 else "plain"  # type: ignore[return-value]


def vocabulary_keys(tokenizer: Any, *, size: int | None = None, style: TokenStyle | None = None) -> list[bytes | None]:
    """Return the key of every id of ``tokenizer`` (None for ids it does not define, up to ``size``)."""
    style = style or detect_style(tokenizer)
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            special.add(str(added))
    size = max(size or 0, max(vocab.values(), default=-1) + 1)
    keys: list[bytes | None] = [None] * size
    for token, index in vocab.items():
        keys[index] = SPECIAL_PREFIX + token.encode("utf-8") if token in special else token_key(token, style)
    return keys


def _longest_known_prefix(key: bytes, index: dict[bytes, list[int]]) -> list[int]:
    """Return the ids of the longest proper prefix of ``key`` in ``index`` (trying without a leading space too)."""
    for length in range(len(key) - 1, 0, -1):
        if key[:length] in index:
            return index[key[:length]]
    unspaced = key[1:] if key.startswith(b" ") else b""
    for length in range(len(unspaced), 0, -1):
        if unspaced[:length] in index:
            return index[unspaced[:length]]
    return []


@dataclass
class VocabularyPair:
    """The student's and the teacher's vocabularies, matched by key. Build once per run.

    :param keys_S: the key of each student id (None: unused id, e.g. padding of the output head).
    :param keys_T: the key of each teacher id.
    """

    keys_S: Sequence[bytes | None]
    keys_T: Sequence[bytes | None]
    _on_device: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_tokenizers(
        cls,
        tokenizer_S: Any,
        tokenizer_T: Any,
        *,
        vocab_size_S: int | None = None,
        vocab_size_T: int | None = None,
    ) -> VocabularyPair:
        """Build the pair from two Hugging Face tokenizers.

        :param vocab_size_S: the student model's number of logits, when larger than the tokenizer's
            vocabulary (a padded output head); the extra ids are unmatched.
        :param vocab_size_T: the same for the teacher.
        """
        return cls(vocabulary_keys(tokenizer_S, size=vocab_size_S), vocabulary_keys(tokenizer_T, size=vocab_size_T))

    def __post_init__(self) -> None:
        index_T: dict[bytes, list[int]] = {}
        for token_id, key in enumerate(self.keys_T):
            if key is not None:
                index_T.setdefault(key, []).append(token_id)
        self._index_T = index_T
        classes: dict[bytes, int] = {}
        class_S = [-1] * len(self.keys_S)
        for token_id, key in enumerate(self.keys_S):
            if key is not None and key in index_T:
                class_S[token_id] = classes.setdefault(key, len(classes))
        class_T = [-1] * len(self.keys_T)
        for key, class_id in classes.items():
            for token_id in index_T[key]:
                class_T[token_id] = class_id
        self.class_S = torch.tensor(class_S, dtype=torch.int64)
        self.class_T = torch.tensor(class_T, dtype=torch.int64)
        self.num_classes = len(classes)
        counts_S = torch.bincount(self.class_S[self.class_S >= 0], minlength=self.num_classes)
        counts_T = torch.bincount(self.class_T[self.class_T >= 0], minlength=self.num_classes)
        #: every shared key names exactly one id on each side: matching is a gather, not a sum
        self.one_to_one = bool((counts_S == 1).all() and (counts_T == 1).all())

    @property
    def size_S(self) -> int:
        return len(self.keys_S)

    @property
    def size_T(self) -> int:
        return len(self.keys_T)

    def key_lengths(self, side: Literal["S", "T"]) -> Tensor:
        """Return (V,) the byte length of each id's text on ``side`` (0 for unused ids and special tokens)."""
        keys = self.keys_S if side == "S" else self.keys_T
        return torch.tensor(
            [0 if key is None or key.startswith(SPECIAL_PREFIX) else len(key) for key in keys], dtype=torch.int64
        )

    def matched_fraction(self) -> tuple[float, float]:
        """Return the fraction of student ids and of teacher ids that are matched."""
        return (
            float((self.class_S >= 0).float().mean()) if self.size_S else 0.0,
            float((self.class_T >= 0).float().mean()) if self.size_T else 0.0,
        )

    def matching(self, device: torch.device | str) -> dict[str, Tensor]:
        """Return the index tensors of the exact-match split, on ``device`` (cached per device).

        ``matched_S`` / ``matched_T``: ids with a class, ``class_of_S`` / ``class_of_T`` their
        classes (for one-to-one pairs, ``matched_S[i]`` and ``matched_T[i]`` share class i);
        ``unmatched_S`` / ``unmatched_T``: the other ids.
        """
        cache_key = ("matching", str(device))
        if cache_key not in self._on_device:
            tensors = {}
            for side, classes in (("S", self.class_S), ("T", self.class_T)):
                order = torch.argsort(torch.where(classes >= 0, classes, torch.full_like(classes, self.num_classes)))
                matched = order[: int((classes >= 0).sum())]
                tensors[f"matched_{side}"] = matched
                tensors[f"class_of_{side}"] = classes[matched]
                tensors[f"unmatched_{side}"] = torch.nonzero(classes < 0).flatten()
            self._on_device[cache_key] = {name: value.to(device) for name, value in tensors.items()}
        return self._on_device[cache_key]

    def projection(self, device: torch.device | str) -> tuple[Tensor, Tensor, Tensor]:
        """Return the sparse student-to-teacher matrix W as ``(student ids, teacher ids, weights)``.

        Row s of W spreads student token s over the teacher tokens with the same key, else over
        those with the longest key that is a prefix of s's key (``b" 123"`` -> ``b" 1"``; then
        without the leading space), equally; a row with no such token is empty (its mass is lost to
        the projected distribution). Built once, on the CPU, from the keys; cached per device.
        """
        cache_key = ("projection", str(device))
        if cache_key not in self._on_device:
            rows: list[int] = []
            cols: list[int] = []
            weights: list[float] = []
            for token_id, key in enumerate(self.keys_S):
                if key is None:
                    continue
                targets = self._index_T.get(key) or (
                    [] if key.startswith(SPECIAL_PREFIX) else _longest_known_prefix(key, self._index_T)
                )
                if targets:
                    rows.extend([token_id] * len(targets))
                    cols.extend(targets)
                    weights.extend([1.0 / len(targets)] * len(targets))
            self._on_device[cache_key] = (
                torch.tensor(rows, dtype=torch.int64, device=device),
                torch.tensor(cols, dtype=torch.int64, device=device),
                torch.tensor(weights, dtype=torch.float32, device=device),
            )
        return self._on_device[cache_key]


__all__ = [
    "SPECIAL_PREFIX",
    "TokenStyle",
    "VocabularyPair",
    "byte_level_alphabet",
    "detect_style",
    "token_key",
    "vocabulary_keys",
]
