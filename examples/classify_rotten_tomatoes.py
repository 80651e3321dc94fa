"""Sentiment classification: distil a fine-tuned MiniLM-L6 into a 2-layer student on Rotten Tomatoes.

1. Fine-tune the packaged all-MiniLM-L6-v2 (6 layers, hidden 384) on review snippets labelled
   rotten/fresh, with ``BasicTraining`` (or take it from the teacher cache).
2. Cut a 2-layer student out of it (teacher layers 3 and 6, as ``student_init_layers`` advises), or
   with ``--student-builder block_influence|width`` let ``distill_core.students`` cut it (the
   ``width`` student, 3 layers with half of each MLP, is the classification demo's default).
3. Distil with ``Distillation``: KD on the logits (T²-scaled KL at temperature T) plus
   hidden-state matches from ``uniform_layer_mapping`` (student layer 1 <- teacher layer 3,
   student layer 2 <- teacher layer 6).
4. Print the dev accuracy of teacher and student; exit with status 1 unless the student beats the
   majority class by ``--min-metric`` (default: majority share + 0.05).

    python examples/classify_rotten_tomatoes.py                    # default sizes, a few minutes
    python examples/classify_rotten_tomatoes.py --train-size 300 --dev-size 200 --teacher-steps 20 --steps 20

The data split is fixed and seeded (``distill_core.demo.data``); docs/examples.md has the numbers.
"""

from __future__ import annotations

import sys
from typing import Any

import _shared
import torch

from distill_core import DistillationConfig, Distillation
from distill_core.demo.batches import encode_texts, make_eval_loader, make_loader
from distill_core.demo.data import load_text_classification
from distill_core.demo.measure import accuracy
from distill_core.demo.models import freeze_embeddings, load_pretrained, load_tokenizer
from distill_core.demo.pipeline import classification_adaptor
from distill_core.demo.student_builders import (
    STUDENT_BUILDERS,
    builder_shape,
    cut_student,
    hidden_matches,
    importance_for,
)

DEFAULTS = {  # Rotten Tomatoes; examples/classify_bbc.py runs this same script with BBC's sizes
    "train_size": 2000,
    "dev_size": 500,
    "max_length": 64,
    "batch_size": 32,
    "teacher_steps": 120,
    "steps": 150,
    "teacher_lr": 2e-4,
    "student_lr": 2e-4,
    "temperature": 2.0,
    "hidden_weight": 1.0,
    "output_dir": "examples-out/rotten_tomatoes",
}
STUDENT_LAYERS = 2


#: what differs between the data sets: how to describe them, and the teacher-cache task name
DATASETS = {
    "rt": {"name": "Rotten Tomatoes", "items": "snippets", "labels": "labels"},
    "bbc": {"name": "BBC News", "items": "articles", "labels": "topics"},
}


def main(
    argv: list[str] | None = None, *, dataset: str = "rt", defaults: dict[str, Any] = DEFAULTS, doc: str = __doc__
) -> int:
    parser = _shared.build_parser(doc.split("\n\n")[0], defaults, metric="dev accuracy")
    parser.add_argument(
        "--student-builder",
        choices=STUDENT_BUILDERS,
        default="layers",
        help="layers: copy the teacher layers student_init_layers names; block_influence: the layers of highest "
        "block influence; width: one layer more with each MLP pruned by activation importance "
        "(docs/students.md, 'Classification: MiniLM')",
    )
    args = parser.parse_args(argv)
    _shared.check_options(parser, args, (dataset,))
    started = _shared.prepare(args)
    described = DATASETS[dataset]

    data = load_text_classification(dataset, train_size=args.train_size, dev_size=args.dev_size)
    tokenizer = load_tokenizer()
    train_set = encode_texts(tokenizer, data.train.texts, data.train.labels, max_length=args.max_length)
    dev_set = encode_texts(tokenizer, data.dev.texts, data.dev.labels, max_length=args.max_length)
    dev_loader = make_eval_loader(dev_set, batch_size=128)
    _shared.say(
        f"{described['name']}: {len(train_set)} train / {len(dev_set)} dev {described['items']}, "
        f"{described['labels']} {data.label_names}"
    )

    def build_teacher() -> torch.nn.Module:
        teacher = load_pretrained(num_labels=data.num_labels, seed=args.seed)
        freeze_embeddings(teacher)  # half of MiniLM's weights; freezing them speeds CPU training a lot
        return teacher

    def train_teacher(teacher: torch.nn.Module) -> float:
        loader = make_loader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
        return _shared.fine_tune(
            teacher,
            loader,
            classification_adaptor,
            args=args,
            run="teacher",
            steps=args.teacher_steps,
            lr=args.teacher_lr,
        )

    teacher, cached = _shared.obtain_teacher(
        args, task=dataset, train_size=args.train_size, seed=args.seed, build=build_teacher, train=train_teacher
    )
    teacher_accuracy = accuracy(teacher, dev_loader)
    _shared.say(f"[teacher] dev accuracy {teacher_accuracy:.1%}")

    shape = builder_shape(args.student_builder, teacher.config, STUDENT_LAYERS)
    # block influence, activation importance: 16 batches of train text
    scores = importance_for(teacher, shape, train_set, batches=16, batch_size=args.batch_size)
    student = cut_student(teacher, shape, scores=scores)
    freeze_embeddings(student)
    # the student's embeddings are the teacher's, frozen: matching them (hidden state 0) would add nothing;
    # the uniform mapping pairs student layer 1 with teacher layer 3 and 2 with 6 (for 2 layers)
    matches = hidden_matches(teacher.config, student.config, weight=args.hidden_weight)
    distill_config = DistillationConfig(
        temperature=args.temperature,
        kd_loss_type="kl",  # Hinton et al.: T² · KL(teacher ‖ student)
        hard_label_weight=0.0,  # the student learns from the teacher's soft labels alone
        intermediate_matches=matches,
    )
    student_layers = student.config.num_hidden_layers
    _shared.say(f"[student] distilling into {shape.describe(teacher.config)} for {args.steps} steps")
    distiller = Distillation(
        train_config=_shared.train_config(args, "student"),
        distill_config=distill_config,
        model_T=teacher,
        model_S=student,
        adaptor_T=classification_adaptor,
        adaptor_S=classification_adaptor,
    )
    _shared.train_student(distiller, student, train_set, args)
    student_accuracy = accuracy(student, dev_loader)
    _shared.say(
        f"[student] dev accuracy {student_accuracy:.1%} ({student_accuracy / teacher_accuracy:.0%} of the teacher's)"
    )

    check = _shared.Check("dev accuracy", student_accuracy, _shared.majority_share(data.dev.labels), "majority class")
    return _shared.finish(
        args,
        started,
        [check],
        {"teacher_accuracy": teacher_accuracy, "teacher_from_cache": cached, "student_layers": student_layers,
         "student_builder": args.student_builder},
    )


if __name__ == "__main__":
    sys.exit(main())
