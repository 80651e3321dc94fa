"""Multi-teacher distillation: several fine-tuned MiniLM-L6 teachers, one 2-layer student (Rotten Tomatoes).

1. Fine-tune ``--teachers`` copies of the packaged MiniLM-L6 on the same review snippets, with
   seeds ``--seed``, ``--seed + 1``, ... (each seed draws its own classification head, data order
   and dropout), with ``BasicTraining``; teachers already in the teacher cache are reused.
2. Cut a 2-layer student out of teacher 0 (its layers 3 and 6).
3. Distil with ``MultiTeacherDistillation``: KD towards the average of the teachers' logits
   (``teacher_weights``, equal by default) plus hidden-state matches that name their teacher
   (``"teacher": 0``, the one the student was cut from).
4. Print the dev accuracy of every teacher, of their ensemble (the averaged logits the student
   imitates) and of the student; exit with status 1 unless the student beats the majority class by
   ``--min-metric`` (default: majority share + 0.05).

    python examples/multi_teacher_ensemble.py
    python examples/multi_teacher_ensemble.py --teachers 2 --train-size 300 --dev-size 150 --teacher-steps 25 --steps 20
"""

from __future__ import annotations

import sys
from typing import Any

import _shared
import torch

from distill_core import DistillationConfig, MultiTeacherDistillation
from distill_core.demo.batches import encode_texts, make_eval_loader, make_loader
from distill_core.demo.data import load_text_classification
from distill_core.demo.measure import accuracy
from distill_core.demo.models import freeze_embeddings, load_pretrained, load_tokenizer, make_student
from distill_core.demo.pipeline import classification_adaptor
from distill_core.layer_mapping import student_init_layers, uniform_layer_mapping

DEFAULTS = {
    "train_size": 1000,
    "dev_size": 500,
    "max_length": 48,
    "batch_size": 16,
    "teacher_steps": 60,
    "steps": 100,
    "teacher_lr": 3e-4,
    "student_lr": 2e-4,
    "temperature": 2.0,
    "hidden_weight": 1.0,
    "output_dir": "examples-out/multi_teacher",
}
STUDENT_LAYERS = 2


def dev_accuracies(teachers: list[torch.nn.Module], dev_loader: Any, weights: list[float]) -> tuple[list[float], float]:
    """Dev accuracy of each teacher and of their weighted average of logits (exactly the student's KD target)."""
    labels = torch.cat([batch["labels"] for batch in dev_loader])
    logits = [torch.cat(_shared.predictions(teacher, dev_loader)) for teacher in teachers]
    averaged = sum(weight * teacher_logits for weight, teacher_logits in zip(weights, logits))
    return (
        [float((teacher_logits.argmax(dim=-1) == labels).float().mean()) for teacher_logits in logits],
        float((averaged.argmax(dim=-1) == labels).float().mean()),
    )


def main(argv: list[str] | None = None) -> int:
    parser = _shared.build_parser(__doc__.split("\n\n")[0], DEFAULTS, metric="dev accuracy")
    parser.add_argument("--teachers", type=int, default=3, help="how many teachers (seeds --seed, --seed + 1, ...)")
    args = parser.parse_args(argv)
    _shared.check_options(parser, args, ("rt",))
    if args.teachers < 1:
        parser.error(f"--teachers must be at least 1, got {args.teachers}")
    started = _shared.prepare(args)

    data = load_text_classification("rt", train_size=args.train_size, dev_size=args.dev_size)
    tokenizer = load_tokenizer()
    train_set = encode_texts(tokenizer, data.train.texts, data.train.labels, max_length=args.max_length)
    dev_set = encode_texts(tokenizer, data.dev.texts, data.dev.labels, max_length=args.max_length)
    dev_loader = make_eval_loader(dev_set, batch_size=128)
    _shared.say(f"Rotten Tomatoes: {len(train_set)} train / {len(dev_set)} dev snippets, {args.teachers} teachers")

    teachers, from_cache = [], []
    for seed in range(args.seed, args.seed + args.teachers):

        def build_teacher(seed: int = seed) -> torch.nn.Module:
            teacher = load_pretrained(num_labels=data.num_labels, seed=seed)
            freeze_embeddings(teacher)
            return teacher

        def train_teacher(teacher: torch.nn.Module, seed: int = seed) -> float:
            loader = make_loader(train_set, batch_size=args.batch_size, shuffle=True, seed=seed)
            return _shared.fine_tune(
                teacher,
                loader,
                classification_adaptor,
                args=args,
                run=f"teacher-seed{seed}",
                steps=args.teacher_steps,
                lr=args.teacher_lr,
            )

        # the same key as classify_rotten_tomatoes.py's teacher: run with equal settings, they share it
        teacher, cached = _shared.obtain_teacher(
            args, task="rt", train_size=args.train_size, seed=seed, build=build_teacher, train=train_teacher
        )
        teachers.append(teacher)
        from_cache.append(cached)
    weights = [1.0 / len(teachers)] * len(teachers)
    teacher_accuracies, ensemble = dev_accuracies(teachers, dev_loader, weights)
    for seed, teacher_accuracy in zip(range(args.seed, args.seed + args.teachers), teacher_accuracies):
        _shared.say(f"[teacher seed {seed}] dev accuracy {teacher_accuracy:.1%}")
    _shared.say(f"[ensemble] dev accuracy of the averaged logits {ensemble:.1%}")

    num_teacher_layers = teachers[0].config.num_hidden_layers
    student = make_student(teachers[0], student_init_layers(num_teacher_layers, STUDENT_LAYERS))
    freeze_embeddings(student)
    matches = (
        uniform_layer_mapping(num_teacher_layers, STUDENT_LAYERS, weight=args.hidden_weight, include_embeddings=False)
        if args.hidden_weight > 0
        else []
    )
    distill_config = DistillationConfig(
        temperature=args.temperature,
        kd_loss_type="kl",
        # hidden states of different teachers live in different spaces; match those of teacher 0,
        # whose layers the student starts from
        intermediate_matches=[{**match, "teacher": 0} for match in matches],
    )
    _shared.say(f"[student] distilling {len(teachers)} teachers into {STUDENT_LAYERS} layers for {args.steps} steps")
    distiller = MultiTeacherDistillation(
        train_config=_shared.train_config(args, "student"),
        distill_config=distill_config,
        model_T=teachers,
        model_S=student,
        adaptor_T=classification_adaptor,
        adaptor_S=classification_adaptor,
        teacher_weights=weights,
    )
    _shared.train_student(distiller, student, train_set, args)
    student_accuracy = accuracy(student, dev_loader)
    _shared.say(f"[student] dev accuracy {student_accuracy:.1%} ({student_accuracy / ensemble:.0%} of the ensemble's)")

    check = _shared.Check("dev accuracy", student_accuracy, _shared.majority_share(data.dev.labels), "majority class")
    return _shared.finish(
        args,
        started,
        [check],
        {
            "teacher_accuracies": teacher_accuracies,
            "teachers_from_cache": from_cache,
            "ensemble_accuracy": ensemble,
            "student_layers": STUDENT_LAYERS,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
