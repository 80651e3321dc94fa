"""Students of the classification demo cut from the fine-tuned MiniLM-L6 by each rule, distilled; prints JSON.

    python benchmarks/classification_students.py [--students layers block_influence width width_hidden]
        [--alone block_influence] [--seeds 1 2] [--json]

The demo's default setting (Rotten Tomatoes, 1,000 labels, the whole train pool as transfer text,
2,000 dev snippets, 200 steps, KD + hidden matches at weight 0.1, 1 torch thread), its cached
fine-tuned teacher, and students of about the same parameters without embeddings:

- ``layers``: today's copy of teacher layers ``student_init_layers(6, 2)`` = 2 and 5;
- ``block_influence``: the 2 layers of highest block influence, calibrated on the first
  ``--calibration-batches`` batches of the train pool (``distill_core.students``);
- ``width``: the uniform rule's 3 layers (``student_init_layers(6, 3)`` = 1, 3, 5), each with the
  768 of 1,536 MLP channels of highest activation importance (the demo's default
  ``--student-builder width``);
- ``width_block_influence``: the same MLP pruning on the 3 layers of highest block influence;
- ``width_hidden``: all 6 layers at hidden size 192 (6 of 12 heads, the embeddings sliced too) with
  1,152 MLP channels; its hidden matches go through a linear projection 192 -> 384.

For each: parameters, dev accuracy before training, dev accuracy after distillation per seed, the
training time, and CPU latency per example; ``--alone`` also trains the named students without the
teacher (the demo's baseline). Run from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's distill_core, not an installed one

from distill_core.demo.batches import encode_texts, make_eval_loader, make_loader  # noqa: E402
from distill_core.demo.cli import build_parser as demo_parser  # noqa: E402
from distill_core.demo.cli import resolve_options  # noqa: E402
from distill_core.demo.cpus import use_threads  # noqa: E402
from distill_core.demo.data import load_text_classification  # noqa: E402
from distill_core.demo.measure import accuracy, latency_ms  # noqa: E402
from distill_core.demo.models import count_parameters, freeze_embeddings, load_tokenizer  # noqa: E402
from distill_core.demo.pipeline import TrainSettings, distil, fine_tune  # noqa: E402
from distill_core.demo.runner import obtain_teacher  # noqa: E402
from distill_core.layer_mapping import student_init_layers  # noqa: E402
from distill_core.demo.student_builders import (  # noqa: E402
    StudentShape,
    builder_shape,
    calibrate_teacher,
    calibration_batches,
    cut_student,
    hidden_matches,
    needs_calibration,
)

STUDENTS = ("layers", "block_influence", "width", "width_block_influence", "width_hidden")


def shape_of(name: str, teacher_config, num_layers: int) -> StudentShape:
    if name == "width_block_influence":  # the width student's MLP pruning on the layers of highest block influence
        return StudentShape(**{**vars(builder_shape("width", teacher_config, num_layers)),
                               "method": "block_influence"})
    if name == "width_hidden":
        return StudentShape(layers=int(teacher_config.num_hidden_layers), method="block_influence", heads=6,
                            hidden=192, intermediate=1152)
    return builder_shape(name, teacher_config, num_layers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="rt")
    parser.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS))
    parser.add_argument("--alone", nargs="*", choices=STUDENTS, default=[],
                        help="also train these students without the teacher")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--calibration-batches", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None, help="the demo's teacher cache")
    parser.add_argument("--demo-args", default="", help="more `distill demo` options, e.g. '--student-steps 50'")
    parser.add_argument("--json", action="store_true", help="print one JSON line (else an indented report)")
    args = parser.parse_args()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    use_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="distill-cls-students-"))
    demo = demo_parser().parse_args(["--dataset", args.dataset, "--threads", str(args.threads), "--no-progress",
                                     "--output-dir", str(workdir), "--student-layers", str(args.student_layers),
                                     *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else []),
                                     *args.demo_args.split()])
    resolve_options(demo)
    data = load_text_classification(demo.dataset, train_size=demo.transfer_size, dev_size=demo.dev_size)
    labelled = data.train.head(demo.train_size)
    tokenizer = load_tokenizer()
    train_set = encode_texts(tokenizer, labelled.texts, labelled.labels, max_length=demo.max_length)
    transfer_set = encode_texts(tokenizer, data.train.texts, None, max_length=demo.max_length)
    dev_set = encode_texts(tokenizer, data.dev.texts, data.dev.labels, max_length=demo.max_length)
    dev_loader = make_eval_loader(dev_set, batch_size=128)
    with contextlib.redirect_stdout(sys.stderr):  # the demo's messages; stdout holds the JSON alone
        teacher, teacher_accuracy, teacher_info = obtain_teacher(demo, data.num_labels, train_set, dev_loader)
    config = teacher.config
    timed = dev_set.input_ids[:demo.latency_examples]

    scores, calibration_seconds = None, None
    shapes = {name: shape_of(name, config, args.student_layers) for name in args.students}
    if any(needs_calibration(shape, config) for shape in shapes.values()):
        start = time.perf_counter()
        scores = calibrate_teacher(teacher, calibration_batches(transfer_set, batches=args.calibration_batches,
                                                                batch_size=demo.batch_size))
        calibration_seconds = round(time.perf_counter() - start, 1)
        say(f"block influence {[round(value, 4) for value in scores.block_influence]} ({calibration_seconds} s)")

    def settings(run: str) -> TrainSettings:
        return TrainSettings(steps=demo.student_steps, learning_rate=demo.student_lr, output_dir=workdir / "runs" / run,
                             log_dir=workdir / "logs" / run, eval_every=demo.student_steps, progress_bar=False)

    from distill_core import DistillationConfig

    rows = []
    for name, shape in shapes.items():
        base = cut_student(teacher, shape, scores=scores)
        distill_config = DistillationConfig(
            temperature=demo.temperature, kd_loss_type=demo.kd_loss, kd_loss_weight=1.0, hard_label_weight=0.0,
            intermediate_matches=hidden_matches(config, base.config, weight=demo.hidden_weight))
        layers = (base.config.distill_student["layers"] if hasattr(base.config, "distill_student")
                  else student_init_layers(config.num_hidden_layers, shape.layers))
        row = {"student": name, "shape": shape.describe(config), "teacher_layers": layers,
               "hidden_size": base.config.hidden_size, "intermediate_size": base.config.intermediate_size,
               "heads": base.config.num_attention_heads,
               "parameters": count_parameters(base), "parameters_without_embeddings": count_parameters(base,
                                                                                                       embeddings=False),
               "start_accuracy": accuracy(base, dev_loader), "latency_ms": round(latency_ms(base, timed), 2),
               "distilled": [], "distilled_seconds": []}
        say(f"[{name}] {row['shape']}: {row['parameters_without_embeddings']:,} parameters without embeddings, "
            f"starts at {row['start_accuracy']:.1%}")
        kinds = ["distilled"] + (["alone"] if name in args.alone else [])
        for kind in kinds:
            row.setdefault(kind, [])
            row.setdefault(f"{kind}_seconds", [])
            for seed in args.seeds:
                student = cut_student(teacher, shape, scores=scores)
                freeze_embeddings(student)
                torch.manual_seed(seed)
                start = time.perf_counter()
                if kind == "distilled":
                    loader = make_loader(transfer_set, batch_size=demo.batch_size, shuffle=True, seed=seed)
                    curve = distil(teacher, student, loader, dev_loader, settings(f"{name}-{kind}-{seed}"),
                                   distill_config)
                else:
                    loader = make_loader(train_set, batch_size=demo.batch_size, shuffle=True, seed=seed)
                    curve = fine_tune(student, loader, dev_loader, settings(f"{name}-{kind}-{seed}"))
                row[kind].append(curve[-1][1])
                row[f"{kind}_seconds"].append(round(time.perf_counter() - start, 1))
                say(f"[{name}] {kind} seed {seed}: {curve[-1][1]:.1%} ({row[f'{kind}_seconds'][-1]:.0f} s)")
        for kind in kinds:
            row[f"{kind}_mean"] = sum(row[kind]) / len(row[kind])
        rows.append(row)
    result = {"benchmark": "classification_students", "dataset": demo.dataset, "seeds": args.seeds,
              "threads": args.threads, "student_steps": demo.student_steps,
              "calibration_batches": args.calibration_batches, "calibration_batch_size": demo.batch_size,
              "calibration_seconds": calibration_seconds, "teacher_accuracy": teacher_accuracy,
              "teacher_cached": teacher_info["cached"],
              "teacher_parameters_without_embeddings": count_parameters(teacher, embeddings=False),
              "block_influence": None if scores is None else [round(value, 4) for value in scores.block_influence],
              "students": rows, "total_seconds": round(time.perf_counter() - started, 1)}
    shutil.rmtree(workdir, ignore_errors=True)  # the runs' logs and checkpoints
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
