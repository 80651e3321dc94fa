"""Multi-task distillation: one 2-layer student learns sentiment (Rotten Tomatoes) and topic (BBC News).

1. Fine-tune one MiniLM-L6 teacher per task with ``BasicTraining`` (or reuse them from the teacher
   cache: with equal settings they are the teachers of classify_rotten_tomatoes.py and
   classify_bbc.py).
2. Build the student: a shared 2-layer encoder (embeddings and layers 3 and 6 of the sentiment
   teacher) and one head per task (pooler + classifier, copied from that task's teacher). It
   returns every head's logits; the student adaptor of each task picks its own.
3. Distil with ``MultiTaskDistillation``: each step draws a task with probability proportional to
   its number of batches (``tau=1``), runs that task's teacher and applies KD on that task's head
   plus hidden-state matches on the shared encoder.
4. Print both tasks' dev accuracy for teacher and student; exit with status 1 unless the student
   beats the majority class of every task by ``--min-metric`` (default: majority share + 0.05).

``--train-size`` and ``--dev-size`` apply to each task (BBC's dev pool holds 427 articles).

    python examples/multi_task_rt_bbc.py
    python examples/multi_task_rt_bbc.py --train-size 300 --dev-size 150 --max-length 48 --teacher-steps 30 --steps 40
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from typing import Any

import _shared
import torch
from torch import nn

from distill_core import DistillationConfig, MultiTaskDistillation
from distill_core.demo.batches import encode_texts, make_eval_loader, make_loader
from distill_core.demo.data import load_text_classification
from distill_core.demo.measure import accuracy
from distill_core.demo.models import freeze_embeddings, load_pretrained, load_tokenizer, make_student
from distill_core.demo.pipeline import classification_adaptor
from distill_core.layer_mapping import student_init_layers, uniform_layer_mapping

DEFAULTS = {
    "train_size": 800,
    "dev_size": 400,
    "max_length": 64,
    "batch_size": 16,
    "teacher_steps": 80,
    "steps": 150,
    "teacher_lr": 2e-4,
    "student_lr": 2e-4,
    "temperature": 2.0,
    "hidden_weight": 1.0,
    "output_dir": "examples-out/multi_task",
}
TASKS = {"rt": "Rotten Tomatoes sentiment", "bbc": "BBC News topic"}
STUDENT_LAYERS = 2


class MultiTaskStudent(nn.Module):
    """A shared BERT encoder with one head per task; ``forward`` returns every head's logits.

    Each head is a BERT pooler (first token, dense, tanh) followed by a linear classifier.
    """

    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> dict[str, Any]:
        # labels are accepted (the batches carry them) but unused: the student learns from its teachers
        outputs = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states
        )
        return {
            "logits": {task: head(outputs.last_hidden_state) for task, head in self.heads.items()},
            "hidden_states": outputs.hidden_states,
        }


def student_adaptor(batch: Mapping[str, torch.Tensor], model_outputs: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The student -> the logits of this batch's task; distill passes ``task`` because the adaptor asks for it."""
    return {
        "logits": model_outputs["logits"][task],
        "hidden": model_outputs["hidden_states"],
        "inputs_mask": batch["attention_mask"],
    }


def task_accuracy(student: MultiTaskStudent, task: str, loader: Any) -> float:
    correct = total = 0
    logits = _shared.predictions(student, loader, logits_of=lambda outputs: outputs["logits"][task])
    for batch, batch_logits in zip(loader, logits):
        correct += int((batch_logits.argmax(dim=-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return correct / total


def main(argv: list[str] | None = None) -> int:
    parser = _shared.build_parser(__doc__.split("\n\n")[0], DEFAULTS, metric="dev accuracy on every task")
    args = parser.parse_args(argv)
    _shared.check_options(parser, args, TASKS)
    started = _shared.prepare(args)
    tokenizer = load_tokenizer()

    train_sets, dev_loaders, majority, teachers, teacher_accuracy, from_cache = {}, {}, {}, {}, {}, {}
    for task, title in TASKS.items():
        data = load_text_classification(task, train_size=args.train_size, dev_size=args.dev_size)
        train_set = encode_texts(tokenizer, data.train.texts, data.train.labels, max_length=args.max_length)
        dev_set = encode_texts(tokenizer, data.dev.texts, data.dev.labels, max_length=args.max_length)
        train_sets[task], dev_loaders[task] = train_set, make_eval_loader(dev_set, batch_size=128)
        majority[task] = _shared.majority_share(data.dev.labels)
        _shared.say(f"{title}: {len(train_set)} train / {len(dev_set)} dev, labels {data.label_names}")

        def build_teacher(num_labels: int = data.num_labels) -> torch.nn.Module:
            teacher = load_pretrained(num_labels=num_labels, seed=args.seed)
            freeze_embeddings(teacher)
            return teacher

        def train_teacher(teacher: torch.nn.Module, train_set: Any = train_set, task: str = task) -> float:
            loader = make_loader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
            return _shared.fine_tune(
                teacher,
                loader,
                classification_adaptor,
                args=args,
                run=f"teacher-{task}",
                steps=args.teacher_steps,
                lr=args.teacher_lr,
            )

        teachers[task], from_cache[task] = _shared.obtain_teacher(
            args, task=task, train_size=args.train_size, seed=args.seed, build=build_teacher, train=train_teacher
        )
        teacher_accuracy[task] = accuracy(teachers[task], dev_loaders[task])
        _shared.say(f"[teacher {task}] dev accuracy {teacher_accuracy[task]:.1%}")

    # The shared encoder starts from layers of the sentiment teacher: sentiment is the harder task,
    # and topic is learned quickly on top of any reasonable encoder (starting from the pretrained
    # MiniLM instead left sentiment at the majority class after 60 steps at the test sizes). Each
    # head starts from its task's teacher. All teachers froze the same pretrained embeddings.
    num_teacher_layers = teachers["rt"].config.num_hidden_layers
    encoder = make_student(teachers["rt"], student_init_layers(num_teacher_layers, STUDENT_LAYERS)).base_model
    freeze_embeddings(encoder)
    heads = {
        task: nn.Sequential(copy.deepcopy(teacher.bert.pooler), copy.deepcopy(teacher.classifier))
        for task, teacher in teachers.items()
    }
    student = MultiTaskStudent(encoder, heads)

    matches = uniform_layer_mapping(
        num_teacher_layers, STUDENT_LAYERS, weight=args.hidden_weight, include_embeddings=False
    )
    distill_config = DistillationConfig(
        temperature=args.temperature,
        kd_loss_type="kl",
        # in a multi-task run, each match compares the student with the teacher of the batch's task
        intermediate_matches=matches if args.hidden_weight > 0 else [],
    )
    _shared.say(f"[student] distilling both tasks into one {STUDENT_LAYERS}-layer student for {args.steps} steps")
    distiller = MultiTaskDistillation(
        train_config=_shared.train_config(args, "student"),
        distill_config=distill_config,
        model_T=teachers,
        model_S=student,
        adaptor_T={task: classification_adaptor for task in TASKS},
        adaptor_S={task: student_adaptor for task in TASKS},
    )
    loaders = {
        task: make_loader(train_sets[task], batch_size=args.batch_size, shuffle=True, seed=args.seed) for task in TASKS
    }
    torch.manual_seed(args.seed)
    with distiller:
        distiller.train(
            _shared.adamw(student, args.student_lr),
            scheduler=_shared.linear_schedule(args.steps),
            dataloaders=loaders,
            num_steps=args.steps,
            tau=1.0,
            max_grad_norm=1.0,
            output_hidden_states=True,
        )

    checks, student_accuracy = [], {}
    for task in TASKS:
        student_accuracy[task] = task_accuracy(student, task, dev_loaders[task])
        _shared.say(
            f"[student {task}] dev accuracy {student_accuracy[task]:.1%} (teacher {teacher_accuracy[task]:.1%})"
        )
        checks.append(
            _shared.Check(f"{task} dev accuracy", student_accuracy[task], majority[task], f"{task} majority class")
        )
    return _shared.finish(
        args,
        started,
        checks,
        {
            "teacher_accuracy": teacher_accuracy,
            "student_accuracy": student_accuracy,
            "teachers_from_cache": from_cache,
            "student_layers": STUDENT_LAYERS,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
