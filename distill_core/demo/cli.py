"""``distill demo``: distil a real pretrained MiniLM into a small student on real text, on a CPU.

Steps: fine-tune the packaged MiniLM-L6 teacher on the chosen data set (or load it from the cache),
cut a student from it (by default 3 of its layers with half of each MLP, the parameters of 2
layers: ``--student-builder``), then for each seed distil it (KD on the logits + hidden-state matches) and
train the same student without distillation; finally print parameters, dev accuracy and CPU
latency per example, and save TensorBoard logs, a PNG plot and ``results.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill_core.demo.assets import TEACHER_MODEL, offline_hub, require_module
from distill_core.demo.command import run_command
from distill_core.demo.cpus import DEMO_THREADS
from distill_core.demo.data import DEV_POOL, TRAIN_POOL
from distill_core.demo.student_builders import STUDENT_BUILDERS

#: the student builder of the measured default run (docs/students.md, "Classification: MiniLM")
DEFAULT_STUDENT_BUILDER = "width"

#: defaults per data set, tuned on 2 CPU cores (docs/demo.md has the measurements)
DEFAULTS: dict[str, dict[str, Any]] = {
    "rt": {"train_size": 1000, "transfer_size": TRAIN_POOL["rt"], "dev_size": 2000, "max_length": 64, "batch_size": 32,
           "teacher_steps": 150, "teacher_lr": 1e-4, "student_steps": 200, "student_lr": 2e-4,
           "temperature": 2.0, "hidden_weight": 0.1, "eval_every": 100},
    "bbc": {"train_size": 800, "transfer_size": TRAIN_POOL["bbc"], "dev_size": 427, "max_length": 128, "batch_size": 16,
            "teacher_steps": 150, "teacher_lr": 1e-4, "student_steps": 150, "student_lr": 2e-4,
            "temperature": 2.0, "hidden_weight": 0.1, "eval_every": 50},
}
DATASET_NAMES = {"rt": "Rotten Tomatoes (sentiment, 2 classes)", "bbc": "BBC News (topic, 5 classes)"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill demo",
        description="Fine-tune the packaged MiniLM-L6 teacher on real text, distil it into a student of about "
                    "2 layers' parameters (--student-builder), "
                    "train the same student without distillation, and compare accuracy and CPU latency. "
                    "Runs offline; the fine-tuned teacher is cached for later runs.",
        epilog="Sizes and hyperparameters left unset take the data set's defaults, shown as (rt: .., bbc: ..). "
               "docs/demo.md explains the splits, the recipe and the measured results.",
    )
    parser.add_argument("--task", choices=["classify", "lm"], default="classify",
                        help="classify: this demo; lm: distil SmolLM2-135M into a small language model, with "
                             "options of its own (distill demo --task lm --help)")
    parser.add_argument("--dataset", choices=sorted(DEFAULTS), default="rt",
                        help="rt: Rotten Tomatoes review snippets (fresh/rotten); bbc: BBC News articles (5 topics)")
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--train-size", type=int, help="labelled training examples")
    sizes.add_argument("--transfer-size", type=int,
                       help="train-pool texts the distilled student learns from through the teacher's outputs, "
                            "labels unused; the first --train-size of them are the labelled ones, and equal to "
                            "--train-size it distils on those alone. Default: the whole train pool")
    sizes.add_argument("--dev-size", type=int, help="dev examples the accuracy is measured on")
    sizes.add_argument("--max-length", type=int, help="tokens per example (longer texts are truncated)")
    sizes.add_argument("--student-layers", type=int, default=2,
                       help="transformer layers of the student (of the layers and block_influence students; the "
                            "width student has one more, each narrower, for about the same parameters)")
    sizes.add_argument("--student-builder", choices=STUDENT_BUILDERS, default=DEFAULT_STUDENT_BUILDER,
                       help="how the student is cut from the fine-tuned teacher: layers (the teacher layers "
                            "student_init_layers picks, whole), block_influence (the layers of highest block "
                            "influence), width (one layer more, the uniform rule's, each with its MLP pruned to "
                            "about the same parameters by activation importance); docs/students.md has the "
                            "measurements")
    sizes.add_argument("--calibration-batches", type=int, default=16,
                       help="batches of the transfer text that measure block influence and activation importance "
                            "(block_influence and width builders)")
    training = parser.add_argument_group("training")
    training.add_argument("--teacher-steps", type=int, help="optimisation steps to fine-tune the teacher")
    training.add_argument("--student-steps", type=int, help="optimisation steps for each student")
    training.add_argument("--batch-size", type=int)
    training.add_argument("--teacher-lr", type=float)
    training.add_argument("--student-lr", type=float)
    training.add_argument("--temperature", type=float, help="KD temperature")
    training.add_argument("--kd-loss", default="kl",
                          help="KD loss: kl (Hinton, with the T^2 factor), ce or mse, or any installed kd_loss plugin")
    training.add_argument("--hidden-weight", type=float, help="weight of each hidden-state match (0: logits KD only)")
    training.add_argument("--eval-every", type=int, help="evaluate the students on dev every this many steps")
    training.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                          help="one distilled and one plain student per seed; accuracies are averaged")
    training.add_argument("--teacher-seed", type=int, default=0)
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", type=Path, default=Path("distill-demo"),
                        help="TensorBoard logs, checkpoints, the plot and results.json go here")
    output.add_argument("--cache-dir", type=Path, default=None,
                        help="where fine-tuned teachers are kept (default: $DISTILL_CACHE_DIR, "
                             "$XDG_CACHE_HOME/distill or ~/.cache/distill)")
    output.add_argument("--no-cache", action="store_true", help="fine-tune the teacher even if a cached one exists")
    output.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's checkpoints under OUTPUT_DIR/runs (about 250 MB per run)")
    output.add_argument("--no-plot", action="store_true", help="skip the PNG plot (and the matplotlib requirement)")
    output.add_argument("--no-progress", action="store_true", help="no progress bars")
    output.add_argument("--threads", type=int, default=DEMO_THREADS,
                        help="CPU threads for torch, whatever the machine has or how busy it is: the accuracies "
                             "depend on it, and docs/demo.md shows those of the default; 2 is faster on idle cores")
    output.add_argument("--latency-examples", type=int, default=100,
                        help="dev examples timed one at a time for the latency column")
    output.add_argument("--check", action="store_true",
                        help="exit with status 1 unless the distilled student keeps >= 95%% of the teacher's "
                             "accuracy and beats the student trained alone")
    for action in parser._actions:
        if action.dest in DEFAULTS["rt"]:
            shown = ", ".join(f"{name}: {values[action.dest]:g}" for name, values in DEFAULTS.items())
            action.help = f"{action.help or action.dest.replace('_', ' ')} ({shown})"
        elif action.default not in (None, False, argparse.SUPPRESS) and action.help:
            action.help += " (default: %(default)s)"
    return parser


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options from the data set's defaults and check them."""
    for name, value in DEFAULTS[args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("train_size", "transfer_size", "dev_size", "max_length", "student_layers", "teacher_steps",
                 "student_steps", "batch_size", "eval_every", "latency_examples", "calibration_batches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("teacher_lr", "student_lr", "temperature"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name, pool, what in (("train_size", TRAIN_POOL, "train"), ("transfer_size", TRAIN_POOL, "train"),
                             ("dev_size", DEV_POOL, "dev")):
        if getattr(args, name) > pool[args.dataset]:
            raise ValueError(f"--{name.replace('_', '-')} for {args.dataset!r} can be at most {pool[args.dataset]} "
                             f"(its whole {what} pool), got {getattr(args, name)}")
    if args.transfer_size < args.train_size:
        raise ValueError(f"--transfer-size ({args.transfer_size}) must be at least --train-size ({args.train_size}): "
                         "the labelled texts are part of the transfer set")
    if args.hidden_weight < 0:
        raise ValueError(f"--hidden-weight must be >= 0, got {args.hidden_weight}")
    from pydantic import ValidationError

    from distill_core import DistillationConfig

    try:  # an unknown loss name fails now, not after the teacher's fine-tuning
        DistillationConfig(kd_loss_type=args.kd_loss)
    except ValidationError as exc:
        raise ValueError(f"--kd-loss: {exc.errors()[0]['msg']}") from None
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    return args


def check_requirements(args: argparse.Namespace) -> None:
    """Fail before any work if a package the run needs is missing, naming the install command."""
    require_module("transformers", 'pip install "transformers>=4.40"', "distill demo")
    if not args.no_plot:
        require_module("matplotlib", 'pip install "matplotlib>=3.7"  (or run with --no-plot)', "the demo's plot")
    from distill_core.demo.data import POOL_ASSETS

    TEACHER_MODEL.path()
    POOL_ASSETS[args.dataset].path()


def run_demo_cli(argv: Sequence[str] | None = None) -> int:
    """Run ``distill demo`` with command-line arguments ``argv``; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `distill demo -- --help`: the separator is not ours
        argv = argv[1:]

    def prepare(args: argparse.Namespace) -> None:
        resolve_options(args)
        check_requirements(args)
        offline_hub()

    def run(args: argparse.Namespace) -> bool:
        from distill_core.demo.runner import run_demo

        return run_demo(args)

    return run_command(build_parser(), argv, prepare=prepare, run=run)
