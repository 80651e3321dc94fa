"""What the example scripts share: options, threads, supervised fine-tuning, the teacher cache, the final check.

Each example keeps its own adaptors, ``DistillationConfig`` and distiller in view; only the
boilerplate around them lives here. Everything goes through distill's public API (``distill_core``)
and the demo's data and model helpers (``distill_core.demo``), which the examples only read.

The scripts import this module as ``_shared``: Python puts a script's own folder first on
``sys.path``, so ``python examples/classify_bbc.py`` finds it from any working directory.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill_core.demo.assets import offline_hub

EXAMPLES = Path(__file__).resolve().parent
DATA = EXAMPLES / "data"

#: how far above its trivial baseline the checked metric must be, unless an example or --margin says otherwise
DEFAULT_MARGIN = 0.05


def say(message: str) -> None:
    print(message, flush=True)


# -- options --------------------------------------------------------------------------------------
def build_parser(
    description: str, defaults: Mapping[str, Any], *, metric: str, margin: float = DEFAULT_MARGIN
) -> argparse.ArgumentParser:
    """Return a parser with the options every example takes; ``defaults`` gives the example's sizes.

    :param metric: what ``--min-metric`` checks, for the help text.
    :param margin: the default of ``--margin``: how far above its trivial baseline the metric must be.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sizes = parser.add_argument_group("sizes (defaults take a few minutes on 2 CPU cores)")
    sizes.add_argument("--train-size", type=int, default=defaults["train_size"], help="training examples")
    sizes.add_argument(
        "--dev-size", type=int, default=defaults["dev_size"], help="dev examples the metric is measured on"
    )
    sizes.add_argument("--max-length", type=int, default=defaults["max_length"], help="wordpieces per example")
    sizes.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    training = parser.add_argument_group("training")
    training.add_argument(
        "--teacher-steps",
        type=int,
        default=defaults["teacher_steps"],
        help="optimisation steps to fine-tune each teacher",
    )
    training.add_argument("--steps", type=int, default=defaults["steps"], help="optimisation steps of the distillation")
    training.add_argument("--teacher-lr", type=float, default=defaults["teacher_lr"])
    training.add_argument("--student-lr", type=float, default=defaults["student_lr"])
    training.add_argument("--temperature", type=float, default=defaults.get("temperature", 4.0), help="KD temperature")
    training.add_argument(
        "--hidden-weight",
        type=float,
        default=defaults.get("hidden_weight", 1.0),
        help="weight of each hidden-state match (0 turns them off)",
    )
    training.add_argument("--seed", type=int, default=0, help="seeds the teacher head, the data order and dropout")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-dir",
        type=Path,
        default=Path(defaults["output_dir"]),
        help="checkpoints, TensorBoard logs and results.json",
    )
    output.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="fine-tuned teachers are kept here (default: $DISTILL_CACHE_DIR, $XDG_CACHE_HOME/distill "
        "or ~/.cache/distill)",
    )
    output.add_argument("--no-cache", action="store_true", help="always fine-tune the teachers, and do not store them")
    output.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's, which follows OMP_NUM_THREADS)"
    )
    output.add_argument("--progress", action="store_true", help="show progress bars")
    check = parser.add_argument_group("check (the exit status)")
    check.add_argument(
        "--margin",
        type=float,
        default=margin,
        help=f"exit with status 1 unless the student's {metric} exceeds its trivial baseline "
        f"(printed with it) by this much",
    )
    check.add_argument(
        "--min-metric",
        type=float,
        default=None,
        help=f"exit with status 1 unless the student's {metric} exceeds this value (replaces --margin)",
    )
    return parser


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace, datasets: Iterable[str] = ()) -> None:
    """Reject sizes and rates that cannot work, with the option's name.

    :param datasets: the text-classification data sets (``"rt"``, ``"bbc"``) the example reads; the
        sizes must fit in each one's train and dev pools.
    """
    from distill_core.demo.data import DEV_POOL, TRAIN_POOL

    for name in ("train_size", "dev_size", "max_length", "batch_size", "teacher_steps", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for dataset in datasets:
        for name, pool in (("train_size", TRAIN_POOL), ("dev_size", DEV_POOL)):
            if getattr(args, name) > pool[dataset]:
                parser.error(f"--{name.replace('_', '-')} can be at most {pool[dataset]} for {dataset!r} (its whole "
                             f"{name[:-5]} pool), got {getattr(args, name)}")
    for name in ("teacher_lr", "student_lr", "temperature"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.hidden_weight < 0:
        parser.error(f"--hidden-weight must be >= 0, got {args.hidden_weight}")


def prepare(args: argparse.Namespace) -> float:
    """Forbid hub downloads, set the thread count and the seed; return the start time."""
    offline_hub()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    return time.perf_counter()


# -- training -------------------------------------------------------------------------------------
def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def adamw(module: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable(module), lr=lr, weight_decay=0.01)


def linear_schedule(steps: int, warmup_fraction: float = 0.1) -> Callable[[torch.optim.Optimizer], Any]:
    """Linear warm-up, then linear decay to 0 at ``steps``.

    Returned as ``optimizer -> scheduler`` so that distill builds it after adding the projections'
    parameter groups to the optimizer (a scheduler built earlier would not see them).
    """
    warmup = max(1, int(warmup_fraction * steps))

    def factor(step: int) -> float:
        return min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_config(args: argparse.Namespace, run: str) -> Any:
    """A ``TrainingConfig`` for one run: CPU, logs every 10 steps, one checkpoint at the end."""
    from distill_core import TrainingConfig

    return TrainingConfig(
        output_dir=str(args.output_dir / "runs" / run),
        log_dir=str(args.output_dir / "logs" / run),
        device="cpu",
        log_steps=10,
        progress_bar=args.progress,
        keep_last=1,
        # each invocation starts its runs over: the checkpoints of an earlier invocation are replaced
        overwrite_output_dir=True,
    )


def fine_tune(
    model: nn.Module,
    loader: Iterable[Any],
    adaptor: Callable[..., Mapping[str, Any]],
    *,
    args: argparse.Namespace,
    run: str,
    steps: int,
    lr: float,
    **model_args: Any,
) -> float:
    """Train ``model`` on its own labels with ``BasicTraining``; return the seconds it took."""
    from distill_core import BasicTraining

    start = time.perf_counter()
    trainer = BasicTraining(train_config=train_config(args, run), model=model, adaptor=adaptor)
    with trainer:
        trainer.train(
            adamw(model, lr),
            scheduler=linear_schedule(steps),
            dataloader=loader,
            num_steps=steps,
            max_grad_norm=1.0,
            **model_args,
        )
    model.eval()
    return time.perf_counter() - start


def obtain_teacher(
    args: argparse.Namespace,
    *,
    task: str,
    train_size: int,
    seed: int,
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], Any],
    model_class: str = "AutoModelForSequenceClassification",
) -> tuple[nn.Module, bool]:
    """Return a fine-tuned teacher, from the demo's teacher cache when an identical one is there.

    The cache key names the task and every setting that changes the teacher, so examples that
    fine-tune the same teacher the same way share it (``multi_task.py`` reuses the teachers of the
    two classification examples). Returns ``(teacher, came_from_cache)``.
    """
    from distill_core.demo import teacher_store
    from distill_core.demo.models import freeze_embeddings, load_saved

    root = teacher_store.cache_root(args.cache_dir)
    key = teacher_store.teacher_key(
        dataset=f"example-{task}",
        train_size=train_size,
        max_length=args.max_length,
        seed=seed,
        steps=args.teacher_steps,
        lr=args.teacher_lr,
        batch_size=args.batch_size,
    )
    folder = None if args.no_cache else teacher_store.cached_teacher(root, key)
    if folder is not None:
        say(f"[teacher {task}] from the cache: {folder}")
        teacher = load_saved(str(folder), model_class)
        freeze_embeddings(teacher)
        teacher.eval()
        return teacher, True
    say(f"[teacher {task}] fine-tuning MiniLM-L6 for {args.teacher_steps} steps (seed {seed})")
    teacher = build()
    seconds = train(teacher)
    if not args.no_cache:
        teacher_store.store_teacher(root, key, teacher, {"key": key, "train_seconds": round(seconds, 1)})
    return teacher, False


# -- measuring ------------------------------------------------------------------------------------
@torch.inference_mode()
def predictions(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    logits_of: Callable[[Any], torch.Tensor] = lambda outputs: outputs.logits,
) -> list[torch.Tensor]:
    """Run ``model`` over ``loader`` in eval mode (labels withheld); return each batch's logits."""
    model.eval()
    results = []
    for batch in loader:
        inputs = {
            key: value for key, value in batch.items() if key in ("input_ids", "attention_mask", "token_type_ids")
        }
        results.append(logits_of(model(**inputs)))
    return results


def majority_share(labels: Iterable[int]) -> float:
    """The accuracy of always predicting the most frequent label: the trivial baseline of a classifier."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / sum(counts.values())


@dataclass(frozen=True)
class Check:
    """One metric the run must pass: the student's ``value`` must exceed the threshold.

    The threshold is ``--min-metric`` when given, else ``baseline + --margin``, where
    ``baseline`` is what a trivial predictor scores (the majority class, all-``O`` tags...).
    """

    name: str
    value: float
    baseline: float
    baseline_name: str


def finish(args: argparse.Namespace, started: float, checks: list[Check], details: Mapping[str, Any]) -> int:
    """Print each check's verdict and write ``results.json``; return the exit status (1 if any check fails).

    :param details: everything else worth keeping (teacher metrics, sizes, timings).
    """
    verdicts, passed_all = [], True
    for check in checks:
        threshold = args.min_metric if args.min_metric is not None else check.baseline + args.margin
        passed = math.isfinite(check.value) and check.value > threshold
        passed_all = passed_all and passed
        verdicts.append({**asdict(check), "threshold": threshold, "passed": passed})
        say(
            f"student {check.name}: {check.value:.4f} ({check.baseline_name}: {check.baseline:.4f}; "
            f"required: > {threshold:.4f}) -> {'PASS' if passed else 'FAIL'}"
        )
    seconds = time.perf_counter() - started
    results = {
        "checks": verdicts,
        "passed": passed_all,
        "seconds": round(seconds, 1),
        **details,
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }
    path = args.output_dir / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    say(f"results: {path}; total time {seconds:.0f} s")
    return 0 if passed_all else 1


def train_student(distiller: Any, student: torch.nn.Module, train_set: Any, args: argparse.Namespace) -> None:
    """Run ``distiller`` the way every example trains its student: AdamW, linear decay, clipping at 1.0."""
    from distill_core.demo.batches import make_loader

    torch.manual_seed(args.seed)
    with distiller:
        distiller.train(
            adamw(student, args.student_lr),
            scheduler=linear_schedule(args.steps),
            dataloader=make_loader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed),
            num_steps=args.steps,
            max_grad_norm=1.0,
            output_hidden_states=True,
        )
