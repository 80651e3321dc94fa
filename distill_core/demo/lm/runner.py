"""The body of ``distill demo --task lm``: teacher, blocks, students per seed, measurements, report."""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill_core.demo import teacher_store
from distill_core.demo.cpus import numerics, use_threads
from distill_core.demo.lm.cli import TEACHER_LAYERS, OptionError, distill_fields
from distill_core.demo.lm.data import block_loader, lm_splits
from distill_core.demo.lm.measure import HeldOut, evaluate, greedy_continuations
from distill_core.demo.lm.models import (
    TEACHER_NAME,
    build_demo_student,
    count_parameters,
    load_teacher,
    plan_demo_student,
)
from distill_core.demo.lm.report import LMRow, format_table, plot_curves, verdict
from distill_core.demo.lm.train import RunOutcome, build_cache, distil, teacher_cache_settings, train_alone
from distill_core.demo.pipeline import TrainSettings
from distill_core.demo.report import tensorboard_line
from distill_core.demo.runner import drop_checkpoints

#: the runs of each seed: (key, row label); "on-policy" only with --on-policy
KINDS = {"distilled": "distilled student", "alone": "student alone", "on-policy": "distilled on-policy"}


def _say(message: str) -> None:
    print(message, flush=True)


def _load() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def _row(name: str, model: torch.nn.Module) -> LMRow:
    return LMRow(name=name, layers=model.config.num_hidden_layers, parameters=count_parameters(model),
                 parameters_without_embeddings=count_parameters(model, embeddings=False))


def _settings(args: argparse.Namespace, run_name: str) -> TrainSettings:
    return TrainSettings(steps=args.steps, learning_rate=args.lr, output_dir=args.output_dir / "runs" / run_name,
                         log_dir=args.output_dir / "logs" / run_name, eval_every=min(args.eval_every, args.steps),
                         progress_bar=not args.no_progress)


def _sampler(args: argparse.Namespace, student: torch.nn.Module, tokenizer: Any) -> Any:
    from distill_core.on_policy import OnPolicySampler

    # a news article has no chat end: the plain-text end <|endoftext|> ends a sample as well as <|im_end|>
    stops = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")} - {None})
    prompt_length = args.block_size // 2
    return OnPolicySampler(student, probability=args.on_policy, prompt_length=prompt_length,
                           max_new_tokens=args.block_size - prompt_length, temperature=args.sample_temperature,
                           eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)


@dataclass
class Students:
    """Everything the seeds' trainings produced: a row, curves and run records per kind, the last students."""

    rows: dict[str, LMRow] = field(default_factory=dict)
    curves: dict[str, list[list[tuple[int, float]]]] = field(default_factory=dict)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    models: dict[str, torch.nn.Module] = field(default_factory=dict)


def _describe(args: argparse.Namespace, kind: str) -> str:
    if kind == "alone":
        return "next-token loss only"
    text = f"KD {args.kd_loss} at temperature {args.temperature:g}"
    if args.hard_label_weight:
        text += f" + next-token loss x {args.hard_label_weight:g}"
    return text + (f", on-policy with probability {args.on_policy:g}" if kind == "on-policy" else "")


def train_students(args: argparse.Namespace, teacher: torch.nn.Module, tokenizer: Any, train_blocks: list[list[int]],
                   held_out: list[list[int]], teacher_argmax: torch.Tensor, start: torch.nn.Module,
                   initial: HeldOut, distill_config: dict[str, Any]) -> Students:
    """For each seed, train every kind of student from its own copy of the same built student ``start``."""
    kinds = ["distilled", "alone"] + (["on-policy"] if args.on_policy > 0 else [])
    done = Students(curves={KINDS[kind]: [] for kind in kinds}, runs={kind: [] for kind in kinds})
    for seed in args.seeds:
        for kind in kinds:
            run_name = f"{kind}-seed{seed}"
            student = copy.deepcopy(start)
            torch.manual_seed(seed)
            loader = block_loader(train_blocks, batch_size=args.batch_size, shuffle=True, seed=seed)
            settings = _settings(args, run_name)
            _say(f"[{run_name}] {KINDS[kind]}, {args.steps} steps, {_describe(args, kind)}")
            if kind == "alone":
                outcome = train_alone(student, loader, held_out, settings, label=run_name, say=_say,
                                      reference=teacher_argmax)
            else:
                sampler = _sampler(args, student, tokenizer) if kind == "on-policy" else None
                # sampled batches bypass the cache (OnPolicySampler.makes_new_examples); the others read it
                outcome = distil(teacher, student, loader, held_out, settings, distill_config, label=run_name,
                                 say=_say, reference=teacher_argmax, sampler=sampler, tokenizer=tokenizer)
            drop_checkpoints(args, settings)
            final = outcome.final  # distill evaluates at the last step: the trained student's scores
            if final is None:
                raise RuntimeError(f"{run_name}: the training ended without its final held-out evaluation")
            row = done.rows.get(kind) or done.rows.setdefault(
                kind, _row(f"{KINDS[kind]} ({args.student_layers} layers)", student))
            row.perplexities.append(final.perplexity)
            row.agreements.append(final.agreement or 0.0)
            row.train_seconds.append(round(outcome.seconds, 1))
            if kind != "alone":
                row.teacher_seconds.append(round(outcome.teacher_seconds, 1))
            done.curves[KINDS[kind]].append([(0, initial.loss), *outcome.curve])
            done.runs[kind].append(_outcome_record(seed, outcome, final))
            done.models[kind] = student
            teacher_part = ""
            if kind != "alone":
                teacher_part = (f", of which teacher forward {outcome.teacher_seconds:.0f} s "
                                f"({outcome.teacher_calls} calls)")
            _say(f"[{run_name}] held-out perplexity {final.perplexity:,.1f}, top-1 agreement {final.agreement:.1%} "
                 f"({outcome.seconds:.0f} s{teacher_part})")
    return done


def run_lm_demo(args: argparse.Namespace) -> bool:
    """Run the LM demo with resolved options; print the table; return whether distillation did its job."""
    started = time.perf_counter()
    use_threads(args.threads)
    load_at_start = _load()
    _say(f"distill demo --task lm: {TEACHER_NAME} -> {args.student_layers}-layer student on BBC News, "
         f"{args.steps} steps x {args.batch_size} blocks of {args.block_size} tokens, seeds {args.seeds}, "
         f"{args.threads} CPU thread(s), load average {load_at_start}")
    phases: dict[str, Any] = {}
    root = None if args.no_cache else teacher_store.cache_root(args.cache_dir)
    teacher, tokenizer, teacher_info = load_teacher(root, _say, progress=not args.no_progress)
    phases["teacher_load_s"] = teacher_info["load_seconds"]
    _say(f"[teacher] ready in {teacher_info['load_seconds']:.0f} s")

    mark = time.perf_counter()
    try:
        train_blocks, held_out = lm_splits(tokenizer, block_size=args.block_size, train_size=args.train_size,
                                           eval_size=args.eval_size)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    phases["data_s"] = round(time.perf_counter() - mark, 1)
    _say(f"[data] {len(train_blocks)} training blocks ({len(train_blocks) * args.block_size:,} tokens) from the BBC "
         f"train articles, {len(held_out)} held-out blocks from the dev articles ({phases['data_s']:.0f} s)")

    mark = time.perf_counter()
    _say(f"[teacher] held-out evaluation ({len(held_out)} blocks)")
    teacher_scores, teacher_argmax = evaluate(teacher, held_out)
    phases["teacher_eval_s"] = round(time.perf_counter() - mark, 1)
    teacher_row = _row(f"teacher ({TEACHER_NAME})", teacher)
    teacher_row.perplexities = [teacher_scores.perplexity]
    _say(f"[teacher] held-out loss {teacher_scores.loss:.3f}, perplexity {teacher_scores.perplexity:.1f} "
         f"({phases['teacher_eval_s']:.0f} s)")

    mark = time.perf_counter()
    calibration = train_blocks[:args.calibration_blocks]
    if args.layer_method == "block_influence":
        _say(f"[students] scoring the teacher's {TEACHER_LAYERS} layers by block influence on {len(calibration)} "
             f"training blocks")
    plan, scores = plan_demo_student(teacher, args.student_layers, args.layer_method, calibration,
                                     batch_size=args.batch_size, progress=not args.no_progress)
    layers = plan.layers
    phases["student_build_s"] = round(time.perf_counter() - mark, 1)
    start = build_demo_student(teacher, plan)
    if scores is not None:
        _write_layer_scores(args, scores.block_influence, layers)
    initial, _ = evaluate(start, held_out, reference=teacher_argmax)
    _say(f"[students] {args.student_layers} layers, teacher layers {layers} ({args.layer_method.replace('_', ' ')}): "
         f"held-out perplexity {initial.perplexity:,.0f} before training ({phases['student_build_s']:.0f} s)")
    cache_fields: dict[str, Any] = {}
    if not args.no_teacher_cache:
        folder = (root if root is not None else args.output_dir) / "teacher-outputs"
        cache_fields = teacher_cache_settings(str(folder), args.cache_top_k, args.cache_missing_mass)
        what = f"top-{args.cache_top_k} log-probabilities" if args.cache_top_k else "dense logits"
        _say(f"[teacher cache] {what} of the teacher on the {len(train_blocks)} training blocks, in {folder}")
        build = build_cache(teacher, start,
                            block_loader(train_blocks, batch_size=args.batch_size, shuffle=False),
                            {**distill_fields(args), **cache_fields}, _settings(args, "teacher-cache"),
                            tokenizer=tokenizer)
        phases["cache_build_s"] = round(build.seconds, 1)
        phases["cache"] = {"entries": build.entries, "stored_now": build.stored,
                           "bytes_per_token": build.bytes_per_token, "folder": str(folder)}
        earlier = build.entries - build.stored
        reused = f", {earlier} already stored by an earlier run" if earlier else ""
        _say(f"[teacher cache] {build.entries} blocks, {build.bytes_per_token} bytes per token{reused} "
             f"({build.seconds:.0f} s); the distilled students read it instead of running the teacher")
    students = train_students(args, teacher, tokenizer, train_blocks, held_out, teacher_argmax, start, initial,
                              {**distill_fields(args), **cache_fields})

    mark = time.perf_counter()
    _say(f"[latency] greedy continuation of {args.new_tokens} tokens per model, batch 1, {args.threads} thread(s), "
         f"3 interleaved rounds")
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    table_rows = [teacher_row, *students.rows.values()]
    continuations = greedy_continuations([teacher, *students.models.values()], tokenizer, args.prompt,
                                         new_tokens=args.new_tokens, stop_ids=stops)
    for row, continuation in zip(table_rows, continuations):
        row.ms_per_token, row.continuation = continuation.ms_per_token, continuation.text
    phases["latency_s"] = round(time.perf_counter() - mark, 1)

    passed, lines = verdict(students.rows["distilled"], students.rows["alone"])
    print()
    print(format_table(table_rows))
    print()
    print("\n".join(lines))
    print()
    print(f"greedy continuations of {args.prompt!r}:")
    for row in table_rows:
        print(f"  {row.name}: {row.continuation!r}")
    outputs = [tensorboard_line(args.output_dir / "logs")]
    if not args.no_plot:
        plot_path = plot_curves(students.curves, args.output_dir / "held_out_loss_vs_steps.png",
                                teacher_loss=teacher_scores.loss,
                                title=f"{TEACHER_NAME} -> {args.student_layers}-layer student: held-out loss")
        outputs.append(f"plot: {plot_path}")
    total_seconds = time.perf_counter() - started
    phases["total_s"] = round(total_seconds, 1)
    results = {
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "teacher": {**teacher_info, "held_out_loss": teacher_scores.loss},
        "student_layers_from_teacher": layers,
        "student_plan": plan.summary(),
        "block_influence": None if scores is None else [round(float(value), 6) for value in scores.block_influence],
        "initial_student": vars(initial),
        "rows": [vars(row) for row in table_rows],
        "runs": students.runs,
        "curves": students.curves,
        "phases": phases,
        "numerics": numerics(args.threads),
        "load_average": {"start": load_at_start, "end": _load()},
        "teacher_cache": bool(cache_fields),
        "passed": passed,
        "total_seconds": round(total_seconds, 1),
    }
    results_path = args.output_dir / "results.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    outputs.append(f"results: {results_path}")
    print()
    print("\n".join(outputs))
    print(f"total time {total_seconds / 60:.1f} min (load average {load_at_start} at the start, {_load()} at the end)"
          + (" (teacher from cache)" if teacher_info["cached"] else ""))
    return passed


def _write_layer_scores(args: argparse.Namespace, block_influence: Any, kept: list[int]) -> None:
    """Write why those layers: the block-influence table (text) and, unless --no-plot, its bar chart (PNG)."""
    from distill_core.students import layer_table, plot_layer_scores

    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "student_layers.txt").write_text(layer_table(block_influence, kept) + "\n", encoding="utf-8")
    if not args.no_plot:
        plot_layer_scores(block_influence, kept, args.output_dir / "student_layers.png",
                          title=f"{TEACHER_NAME} block influence ({len(kept)} of {TEACHER_LAYERS} kept, filled)")


def _outcome_record(seed: int, outcome: RunOutcome, final: HeldOut) -> dict[str, Any]:
    return {"seed": seed, "train_seconds": round(outcome.seconds, 1), "eval_seconds": round(outcome.eval_seconds, 1),
            "teacher_forward_seconds": round(outcome.teacher_seconds, 1), "teacher_calls": outcome.teacher_calls,
            "held_out": vars(final), "sampler": outcome.sampler}
