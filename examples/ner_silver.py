"""Sequence labelling: token-level KD on silver named-entity tags (spaCy's) over BBC News sentences.

The tags are not human annotations: they are the entities spaCy's small English pipeline
(``en_core_web_sm`` 3.8, OntoNotes types PERSON, ORG, GPE, DATE, MONEY...) finds in BBC News,
stored as character offsets in ``examples/data/bbc_silver_ner.json.gz`` by
``examples/make_silver_ner.py``. So the metric is **agreement with spaCy's silver tags**, not
accuracy against a gold standard; running the example needs neither spaCy nor its model.

How the examples are made:

- sentences: the tagged body sentences of each article (the file's ``sentences``), split by
  article with distill's BBC train/dev split (``bbc_article_split``), so no article is on both
  sides; each side is shuffled with a fixed seed and the first ``--train-size``/``--dev-size`` taken.
- words: BERT's pre-tokenisation of the sentence (whitespace, then punctuation split off); a word
  gets ``B-TYPE`` if an entity starts in it, ``I-TYPE`` if it lies inside an entity, else ``O``.
- word pieces: the first piece of each word carries the word's tag, every other piece (and
  [CLS], [SEP], padding) gets -100, ignored by the loss, the KD term and the metric.

The teacher (MiniLM-L6 with a token-classification head) is fine-tuned with ``BasicTraining``;
the 2-layer student is distilled with ``Distillation``: KD over (batch, length, tags) logits whose
``logits_mask`` marks the first pieces, plus hidden-state matches over all real pieces
(``inputs_mask``). The check: word-level agreement with spaCy above the all-``O`` baseline.

    python examples/ner_silver.py
    python examples/ner_silver.py --train-size 400 --dev-size 100 --teacher-steps 40 --steps 40
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import _shared
import torch

from distill_core import Distillation, DistillationConfig
from distill_core.demo.batches import EncodedDataset, make_loader
from distill_core.demo.data import bbc_article_split, bbc_articles
from distill_core.demo.models import freeze_embeddings, load_pretrained, load_tokenizer, make_student
from distill_core.layer_mapping import student_init_layers, uniform_layer_mapping

SILVER = _shared.DATA / "bbc_silver_ner.json.gz"
SHUFFLE_SEED = 20240601
IGNORE = -100
DEFAULTS = {
    "train_size": 2000,
    "dev_size": 400,
    "max_length": 64,
    "batch_size": 16,
    "teacher_steps": 150,
    "steps": 150,
    "teacher_lr": 3e-4,
    "student_lr": 3e-4,
    "temperature": 1.0,
    "hidden_weight": 1.0,
    "output_dir": "examples-out/ner_silver",
}
STUDENT_LAYERS = 2


@dataclass(frozen=True)
class TaggedSentence:
    words: list[str]
    tags: list[str]


def word_tags(text: str, entities: list[tuple[int, int, str]], tokenizer: Any) -> TaggedSentence:
    """Split ``text`` into BERT words and give each its BIO tag from the character-offset ``entities``."""
    words = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    tags = []
    for _, (start, end) in words:
        tag = "O"
        for entity_start, entity_end, label in entities:
            if start < entity_end and entity_start < end:  # the word overlaps the entity
                tag = f"{'B' if start <= entity_start else 'I'}-{label}"
                break
        tags.append(tag)
    return TaggedSentence([word for word, _ in words], tags)


def load_silver(tokenizer: Any) -> tuple[list[str], dict[str, list[TaggedSentence]]]:
    """Return the entity types and ``{"train": [...], "dev": [...]}`` tagged sentences, each side shuffled."""
    with gzip.open(SILVER, "rt", encoding="utf-8") as handle:
        silver = json.load(handle)
    split = bbc_article_split()
    texts = {file_id: text for file_id, text, _ in bbc_articles()}
    parts: dict[str, list[TaggedSentence]] = {"train": [], "dev": []}
    for file_id, article in silver["articles"].items():
        side = split.get(file_id)  # None: a duplicate of another article
        if side is None:
            continue
        for start, end, entities in article["sentences"]:
            parts[side].append(word_tags(texts[file_id][start:end], entities, tokenizer))
    for tagged in parts.values():
        random.Random(SHUFFLE_SEED).shuffle(tagged)
    return list(silver["labels"]), parts


def encode(
    sentences: list[TaggedSentence], tokenizer: Any, tag_ids: Mapping[str, int], max_length: int
) -> EncodedDataset:
    """Word pieces, with the word's tag id on its first piece and -100 everywhere else."""
    encoded = tokenizer([s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
    labels = []
    for index, sentence in enumerate(sentences):
        previous, row = None, []
        for word in encoded.word_ids(index):
            row.append(IGNORE if word is None or word == previous else tag_ids[sentence.tags[word]])
            previous = word
        labels.append(row)
    return EncodedDataset(encoded["input_ids"], labels=labels)


def tagging_adaptor(batch: Mapping[str, torch.Tensor], model_outputs: Any) -> dict[str, Any]:
    """Token-classification outputs -> distill's dict.

    ``logits`` is (batch, length, tags); ``logits_mask`` keeps the first piece of each word, where
    the tags live, so KD averages over exactly the positions the metric reads; the hidden-state
    matches use every real piece (``inputs_mask``).
    """
    results = {
        "logits": model_outputs.logits,
        "logits_mask": batch["labels"] != IGNORE,
        "hidden": model_outputs.hidden_states,
        "inputs_mask": batch["attention_mask"],
    }
    if model_outputs.loss is not None:
        results["losses"] = [model_outputs.loss]
    return results


def agreement(model: torch.nn.Module, loader: Any, tag_names: list[str]) -> dict[str, float]:
    """Word-level agreement with the silver tags, the all-O baseline, and entity-span precision/recall/F1."""
    logits = _shared.predictions(model, loader)
    words = agree = outside = 0
    predicted_spans, silver_spans = set(), set()
    for batch_index, (batch, batch_logits) in enumerate(zip(loader, logits)):
        predicted = batch_logits.argmax(dim=-1)
        for row in range(len(batch["labels"])):
            keep = batch["labels"][row] != IGNORE
            silver = batch["labels"][row][keep].tolist()
            guess = predicted[row][keep].tolist()
            words += len(silver)
            agree += sum(s == g for s, g in zip(silver, guess))
            outside += sum(tag_names[s] == "O" for s in silver)
            key = (batch_index, row)
            silver_spans |= {(key, *span) for span in spans([tag_names[s] for s in silver])}
            predicted_spans |= {(key, *span) for span in spans([tag_names[g] for g in guess])}
    true_positives = len(predicted_spans & silver_spans)
    precision = true_positives / len(predicted_spans) if predicted_spans else 0.0
    recall = true_positives / len(silver_spans) if silver_spans else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "agreement": agree / words,
        "all_o": outside / words,
        "span_f1": f1,
        "span_precision": precision,
        "span_recall": recall,
        "words": words,
    }


def spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """Entity spans ``(first word, last word + 1, type)`` of a BIO sequence; a stray ``I-`` starts a span."""
    found, start, label = [], None, None
    for index, tag in enumerate([*tags, "O"]):
        inside = tag.startswith("I-") and tag[2:] == label
        if start is not None and not inside:
            found.append((start, index, label))
            start = label = None
        if tag != "O" and not inside:
            start, label = index, tag[2:]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = _shared.build_parser(
        __doc__.split("\n\n")[0], DEFAULTS, metric="word-level agreement with spaCy", margin=0.02
    )  # entity words are about 1 in 6: 2 points over all-O is real tagging
    args = parser.parse_args(argv)
    _shared.check_options(parser, args)
    started = _shared.prepare(args)

    tokenizer = load_tokenizer()
    entity_types, sentences = load_silver(tokenizer)
    tag_names = ["O"] + [f"{prefix}-{label}" for label in entity_types for prefix in "BI"]
    tag_ids = {tag: index for index, tag in enumerate(tag_names)}
    for side, size in (("train", args.train_size), ("dev", args.dev_size)):
        if size > len(sentences[side]):
            parser.error(f"--{side}-size is at most {len(sentences[side])} here, got {size}")
    train_set = encode(sentences["train"][: args.train_size], tokenizer, tag_ids, args.max_length)
    dev_loader = make_loader(
        encode(sentences["dev"][: args.dev_size], tokenizer, tag_ids, args.max_length), batch_size=64, shuffle=False
    )
    _shared.say(
        f"BBC News silver NER: {len(train_set)} train / {args.dev_size} dev sentences, "
        f"{len(tag_names)} BIO tags over {len(entity_types)} OntoNotes types"
    )

    def build_teacher() -> torch.nn.Module:
        teacher = load_pretrained(
            "AutoModelForTokenClassification",
            seed=args.seed,
            num_labels=len(tag_names),
            id2label=dict(enumerate(tag_names)),
            label2id=tag_ids,
        )
        freeze_embeddings(teacher)
        return teacher

    def train_teacher(teacher: torch.nn.Module) -> float:
        loader = make_loader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
        return _shared.fine_tune(
            teacher, loader, tagging_adaptor, args=args, run="teacher", steps=args.teacher_steps, lr=args.teacher_lr
        )

    teacher, cached = _shared.obtain_teacher(
        args,
        task="ner-silver",
        train_size=args.train_size,
        seed=args.seed,
        build=build_teacher,
        train=train_teacher,
        model_class="AutoModelForTokenClassification",
    )
    teacher_scores = agreement(teacher, dev_loader, tag_names)
    _shared.say(
        f"[teacher] agreement with spaCy {teacher_scores['agreement']:.1%} of {teacher_scores['words']} words "
        f"(all-O: {teacher_scores['all_o']:.1%}), entity-span F1 {teacher_scores['span_f1']:.1%}"
    )

    num_teacher_layers = teacher.config.num_hidden_layers
    student = make_student(teacher, student_init_layers(num_teacher_layers, STUDENT_LAYERS))
    freeze_embeddings(student)
    # the student's embeddings are the teacher's, frozen: matching them (hidden state 0) would add nothing
    matches = uniform_layer_mapping(
        num_teacher_layers, STUDENT_LAYERS, weight=args.hidden_weight, include_embeddings=False
    )
    distill_config = DistillationConfig(
        temperature=args.temperature,
        kd_loss_type="kl",  # averaged over the positions logits_mask keeps
        intermediate_matches=matches if args.hidden_weight > 0 else [],
    )
    _shared.say(f"[student] distilling into {STUDENT_LAYERS} layers for {args.steps} steps")
    distiller = Distillation(
        train_config=_shared.train_config(args, "student"),
        distill_config=distill_config,
        model_T=teacher,
        model_S=student,
        adaptor_T=tagging_adaptor,
        adaptor_S=tagging_adaptor,
    )
    _shared.train_student(distiller, student, train_set, args)
    student_scores = agreement(student, dev_loader, tag_names)
    _shared.say(
        f"[student] agreement with spaCy {student_scores['agreement']:.1%}, "
        f"entity-span F1 {student_scores['span_f1']:.1%}"
    )

    check = _shared.Check(
        "word-level agreement with spaCy silver tags",
        student_scores["agreement"],
        student_scores["all_o"],
        "all-O baseline",
    )
    return _shared.finish(
        args,
        started,
        [check],
        {
            "teacher": teacher_scores,
            "student_scores": student_scores,
            "teacher_from_cache": cached,
            "tags": tag_names,
            "student_layers": STUDENT_LAYERS,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
