"""Reading comprehension: distil start/end span prediction on cloze questions made from BBC News.

No human-written questions exist for this corpus, so the set is built from the text itself and
spaCy's silver entities (``examples/data/bbc_silver_ner.json.gz``, made by
``examples/make_silver_ner.py``), the way CNN/Daily Mail-style cloze sets are:

1. Articles: every BBC article with tagged sentences, split by distill's BBC train/dev split
   (``bbc_article_split``), so no article is on both sides. Paragraphs are the article's lines.
2. For each tagged body sentence Q (in file order) take its first *named* entity E (types PERSON,
   ORG, GPE, NORP, LOC, FAC, EVENT, PRODUCT, WORK_OF_ART, LAW, LANGUAGE; numbers and dates are
   skipped) such that another tagged sentence A of the same article, in a different paragraph
   from Q, has an entity with E's exact text and type, and A's paragraph holds at least two
   distinct named entities (so the answer has to be chosen). The first such A in file order is used.
3. Question: Q with that occurrence of E replaced by ``____``. Context: A's whole paragraph (Q is
   never in it, so the answer cannot be copied from the unblanked sentence). Answer: E's
   occurrence in A (character offsets into the context).
4. At most one question per sentence; each side is shuffled with a fixed seed and the first
   ``--train-size`` / ``--dev-size`` questions are kept whose question takes at most half of
   ``--max-length`` word pieces and whose answer survives truncation to ``--max-length`` (question
   first, then as much context as fits).

Example: from business/018.txt, the question "____'s rupee has hit a five-year high after
Standard & Poor's (S&P) raised the country's foreign currency rating." comes with the paragraph
"... S&P, which rates borrowers' creditworthiness, lifted India's rating by one notch to
'BB+'. ..." and the answer "India".

Models: MiniLM-L6 with a span head (``AutoModelForQuestionAnswering``). The adaptor returns the
logits as ``[start_logits, end_logits]``, each (batch, length) with padding pushed to -10000, so KD
is the sum of two softmax-over-positions terms; hidden-state matches as in the other examples.

Metrics on dev: exact match (EM, after lower-casing and dropping punctuation and articles, as in
SQuAD) and token F1 of the best span of at most ``--max-answer-tokens`` pieces inside the context.
Two baselines that never read the question: picking one of the context's silver named entities at
random (expected EM; this is what the check compares against) and always picking the first one.

    python examples/reading_comprehension_cloze.py
    python examples/reading_comprehension_cloze.py --train-size 400 --dev-size 100 --teacher-steps 60 --steps 40
"""

from __future__ import annotations

import collections
import gzip
import json
import random
import re
import string
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
NAMED_TYPES = frozenset(
    {"PERSON", "ORG", "GPE", "NORP", "LOC", "FAC", "EVENT", "PRODUCT", "WORK_OF_ART", "LAW", "LANGUAGE"}
)
BLANK = "____"
DEFAULTS = {
    "train_size": 2000,
    "dev_size": 400,
    "max_length": 96,
    "batch_size": 16,
    "teacher_steps": 120,
    "steps": 200,
    "teacher_lr": 3e-4,
    "student_lr": 5e-4,
    "temperature": 1.0,
    "hidden_weight": 1.0,
    "output_dir": "examples-out/reading_comprehension",
}
STUDENT_LAYERS = 2


@dataclass(frozen=True)
class ClozeQuestion:
    article: str
    question: str
    context: str
    answer: str
    answer_start: int  # character offset in context
    candidates: tuple[str, ...]  # the context's distinct silver named entities, in order of appearance


def build_cloze_set() -> dict[str, list[ClozeQuestion]]:
    """Return ``{"train": [...], "dev": [...]}`` cloze questions, as the module docstring describes."""
    with gzip.open(SILVER, "rt", encoding="utf-8") as handle:
        silver = json.load(handle)
    split = bbc_article_split()
    texts = {file_id: text for file_id, text, _ in bbc_articles()}
    parts: dict[str, list[ClozeQuestion]] = {"train": [], "dev": []}
    for file_id, article in silver["articles"].items():
        side = split.get(file_id)
        if side is None:  # a duplicate of another article
            continue
        text = texts[file_id]
        paragraphs = [(match.start(), match.end()) for match in re.finditer(r"[^\n]+", text)]
        # sentences as (start, end, [(entity start, entity end, type)]) with article offsets
        sentences = [
            (start, end, [(start + s, start + e, label) for s, e, label in entities if label in NAMED_TYPES])
            for start, end, entities in article["sentences"]
        ]
        for q_index in range(len(sentences)):
            question = _first_question(text, sentences, q_index, paragraphs)
            if question is not None:
                parts[side].append(ClozeQuestion(file_id, *question))
    for questions in parts.values():
        random.Random(SHUFFLE_SEED).shuffle(questions)
    return parts


def _paragraph_of(offset: int, paragraphs: list[tuple[int, int]]) -> tuple[int, int]:
    return next(paragraph for paragraph in paragraphs if paragraph[0] <= offset < paragraph[1])


def _first_question(
    text: str, sentences: list[Any], q_index: int, paragraphs: list[tuple[int, int]]
) -> tuple[str, str, str, int, tuple[str, ...]] | None:
    """The cloze question sentence ``q_index`` yields (question, context, answer, answer start, candidates), or None."""
    q_start, q_end, q_entities = sentences[q_index]
    q_paragraph = _paragraph_of(q_start, paragraphs)
    for e_start, e_end, label in q_entities:
        answer = text[e_start:e_end]
        for a_index, (a_start, _, a_entities) in enumerate(sentences):
            if a_index == q_index or q_paragraph[0] <= a_start < q_paragraph[1]:
                continue
            hits = [s for s, e, lab in a_entities if text[s:e] == answer and lab == label]
            if not hits:
                continue
            p_start, p_end = _paragraph_of(a_start, paragraphs)
            candidates = tuple(
                dict.fromkeys(
                    text[s:e] for start, _, entities in sentences if p_start <= start < p_end for s, e, _ in entities
                )
            )
            if len(candidates) < 2:
                continue
            question = text[q_start:e_start] + BLANK + text[e_end:q_end]
            return question, text[p_start:p_end], answer, hits[0] - p_start, candidates
    return None


def normalise(answer: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles; returns the words."""
    answer = "".join(ch for ch in answer.lower() if ch not in string.punctuation)
    return [word for word in answer.split() if word not in ("a", "an", "the")]


def f1(prediction: str, answer: str) -> float:
    predicted, gold = normalise(prediction), normalise(answer)
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def encode(
    questions: list[ClozeQuestion], tokenizer: Any, max_length: int, size: int
) -> tuple[EncodedDataset, list[ClozeQuestion], list[list[tuple[int, int] | None]]]:
    """Tokenise question + context; keep the first ``size`` questions whose answer fits.

    Returns the dataset (``start_positions``/``end_positions`` are the answer's first and last
    pieces), the kept questions and, per kept question, each piece's character span in the
    context (None outside the context).
    """
    input_ids, starts, ends, kept, offsets = [], [], [], [], []
    for question in questions:
        if len(kept) == size:
            break
        if len(tokenizer.tokenize(question.question)) > max_length // 2:  # leave room for the context
            continue
        encoded = tokenizer(
            question.question,
            question.context,
            truncation="only_second",
            max_length=max_length,
            return_offsets_mapping=True,
        )
        sequence_ids = encoded.sequence_ids()
        spans = [span if sequence_ids[i] == 1 else None for i, span in enumerate(encoded["offset_mapping"])]
        answer_end = question.answer_start + len(question.answer)
        start = next((i for i, s in enumerate(spans) if s and s[0] <= question.answer_start < s[1]), None)
        end = next((i for i, s in enumerate(spans) if s and s[0] < answer_end <= s[1]), None)
        if start is None or end is None:  # the answer was truncated away
            continue
        input_ids.append(encoded["input_ids"])
        starts.append(start)
        ends.append(end)
        kept.append(question)
        offsets.append(spans)
    dataset = EncodedDataset(input_ids, start_positions=starts, end_positions=ends)
    return dataset, kept, offsets


def span_adaptor(batch: Mapping[str, torch.Tensor], model_outputs: Any) -> dict[str, Any]:
    """Question-answering outputs -> distill's dict; the logits are ``[start_logits, end_logits]``.

    Padding positions are pushed to -10000 so that the softmax over positions (and so KD) sees
    only real pieces.
    """
    padding = batch["attention_mask"] == 0
    results = {
        "logits": [
            model_outputs.start_logits.masked_fill(padding, -1e4),
            model_outputs.end_logits.masked_fill(padding, -1e4),
        ],
        "hidden": model_outputs.hidden_states,
        "inputs_mask": batch["attention_mask"],
    }
    if model_outputs.loss is not None:  # transformers averages the start and end cross-entropies
        results["losses"] = [model_outputs.loss]
    return results


def evaluate(
    model: torch.nn.Module,
    loader: Any,
    questions: list[ClozeQuestion],
    offsets: list[list[tuple[int, int] | None]],
    max_answer_tokens: int,
) -> dict[str, float]:
    """EM and F1 of the best-scoring context span of at most ``max_answer_tokens`` pieces."""
    outputs = _shared.predictions(model, loader, logits_of=lambda out: torch.stack([out.start_logits, out.end_logits]))
    exact = total_f1 = 0.0
    index = 0
    for batch_logits in outputs:
        for start_logits, end_logits in zip(batch_logits[0], batch_logits[1]):
            spans = offsets[index]
            length = len(spans)
            inside = torch.tensor([span is not None for span in spans])
            scores = start_logits[:length, None] + end_logits[None, :length]
            allowed = torch.triu(torch.ones(length, length, dtype=torch.bool)) & ~torch.triu(
                torch.ones(length, length, dtype=torch.bool), diagonal=max_answer_tokens
            )
            allowed &= inside[:, None] & inside[None, :]
            best = int(scores.masked_fill(~allowed, float("-inf")).argmax())
            first, last = divmod(best, length)
            question = questions[index]
            prediction = question.context[spans[first][0] : spans[last][1]]
            exact += float(normalise(prediction) == normalise(question.answer))
            total_f1 += f1(prediction, question.answer)
            index += 1
    return {"exact_match": exact / index, "f1": total_f1 / index}


def baselines(questions: list[ClozeQuestion]) -> dict[str, float]:
    """EM of question-blind guesses among the context's silver named entities: a random one (expected), the first."""
    random_entity = sum(
        sum(normalise(c) == normalise(q.answer) for c in q.candidates) / len(q.candidates) for q in questions
    ) / len(questions)
    first_entity = sum(normalise(q.candidates[0]) == normalise(q.answer) for q in questions) / len(questions)
    return {"random_entity": random_entity, "first_entity": first_entity}


def main(argv: list[str] | None = None) -> int:
    parser = _shared.build_parser(__doc__.split("\n\n")[0], DEFAULTS, metric="dev exact match")
    parser.add_argument("--max-answer-tokens", type=int, default=10, help="longest span predicted, in word pieces")
    args = parser.parse_args(argv)
    _shared.check_options(parser, args)
    started = _shared.prepare(args)

    tokenizer = load_tokenizer()
    questions = build_cloze_set()
    train_set, _, _ = encode(questions["train"], tokenizer, args.max_length, args.train_size)
    dev_set, dev_questions, dev_offsets = encode(questions["dev"], tokenizer, args.max_length, args.dev_size)
    dev_loader = make_loader(dev_set, batch_size=64, shuffle=False)
    blind = baselines(dev_questions)
    _shared.say(
        f"BBC cloze questions: {len(train_set)} train / {len(dev_set)} dev (of {len(questions['train'])} / "
        f"{len(questions['dev'])} built); question-blind EM: random entity {blind['random_entity']:.1%}, "
        f"first entity {blind['first_entity']:.1%}"
    )

    def build_teacher() -> torch.nn.Module:
        teacher = load_pretrained("AutoModelForQuestionAnswering", seed=args.seed)
        freeze_embeddings(teacher)
        return teacher

    def train_teacher(teacher: torch.nn.Module) -> float:
        loader = make_loader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
        return _shared.fine_tune(
            teacher, loader, span_adaptor, args=args, run="teacher", steps=args.teacher_steps, lr=args.teacher_lr
        )

    teacher, cached = _shared.obtain_teacher(
        args,
        task="cloze-qa",
        train_size=len(train_set),
        seed=args.seed,
        build=build_teacher,
        train=train_teacher,
        model_class="AutoModelForQuestionAnswering",
    )
    teacher_scores = evaluate(teacher, dev_loader, dev_questions, dev_offsets, args.max_answer_tokens)
    _shared.say(f"[teacher] EM {teacher_scores['exact_match']:.1%}, F1 {teacher_scores['f1']:.1%}")

    num_teacher_layers = teacher.config.num_hidden_layers
    student = make_student(teacher, student_init_layers(num_teacher_layers, STUDENT_LAYERS))
    freeze_embeddings(student)
    # the student's embeddings are the teacher's, frozen: matching them (hidden state 0) would add nothing
    matches = uniform_layer_mapping(
        num_teacher_layers, STUDENT_LAYERS, weight=args.hidden_weight, include_embeddings=False
    )
    distill_config = DistillationConfig(
        temperature=args.temperature,
        kd_loss_type="kl",  # applied to start and end logits in turn, and summed
        intermediate_matches=matches if args.hidden_weight > 0 else [],
    )
    _shared.say(f"[student] distilling into {STUDENT_LAYERS} layers for {args.steps} steps")
    distiller = Distillation(
        train_config=_shared.train_config(args, "student"),
        distill_config=distill_config,
        model_T=teacher,
        model_S=student,
        adaptor_T=span_adaptor,
        adaptor_S=span_adaptor,
    )
    _shared.train_student(distiller, student, train_set, args)
    student_scores = evaluate(student, dev_loader, dev_questions, dev_offsets, args.max_answer_tokens)
    _shared.say(f"[student] EM {student_scores['exact_match']:.1%}, F1 {student_scores['f1']:.1%}")

    check = _shared.Check(
        "dev exact match", student_scores["exact_match"], blind["random_entity"], "random silver entity of the context"
    )
    return _shared.finish(
        args,
        started,
        [check],
        {
            "teacher": teacher_scores,
            "student_scores": student_scores,
            "baselines": blind,
            "teacher_from_cache": cached,
            "student_layers": STUDENT_LAYERS,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
