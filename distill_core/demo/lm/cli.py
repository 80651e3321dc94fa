"""``distill demo --task lm``: distil SmolLM2-135M-Instruct into a 20-layer student on real text, on a CPU.

Steps: load the packaged teacher (dequantised once, then from the cache); cut BBC News articles
into token blocks; build the student from the teacher (the 20 of its 30 layers of highest block
influence on a few training blocks, :mod:`distill_core.students`); for each seed distil the
teacher into it (token-level KD) and train the same student on the same blocks without the
teacher (next-token loss), optionally also on-policy (GKD); then print parameters, held-out perplexity, top-1
agreement with the teacher, CPU time per generated token and a greedy continuation of one prompt
from each model, and save TensorBoard logs, a PNG plot and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill_core.demo.assets import BBC_NEWS, SMOLLM2, require_module
from distill_core.demo.command import run_command
from distill_core.demo.cpus import LM_DEMO_THREADS

#: measured on 2 CPU cores (docs/demo.md): the defaults fit the 15-minute budget with room for a busy machine
DEFAULTS: dict[str, Any] = {
    "steps": 80, "batch_size": 4, "block_size": 128, "train_size": 160, "eval_size": 32, "eval_every": 40,
    "student_layers": 20, "layer_method": "block_influence", "calibration_blocks": 16, "lr": 1e-3, "kd_loss": "kl",
    "temperature": 1.0, "hard_label_weight": 0.5, "kd_chunk_size": 128, "cache_top_k": 64,
}
PROMPT = "The government said on Monday that"
TEACHER_LAYERS = 30


class OptionError(ValueError):
    """An option that the data or the model rules out, found after parsing (e.g. a size beyond a pool)."""


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"beta\": 0.5}}', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill demo --task lm",
        description="Distil the packaged SmolLM2-135M-Instruct into a student built from its most important layers "
                    "on BBC News text with token-level KD, train the same student on the same tokens without the "
                    "teacher, and compare held-out perplexity, agreement with the teacher and CPU time per token. "
                    "Runs offline; the dequantised teacher is cached for later runs.",
        epilog="docs/demo.md explains the data, the recipe and the measured results.",
    )
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--steps", type=int, help="optimisation steps of each student")
    sizes.add_argument("--batch-size", type=int, help="blocks per step")
    sizes.add_argument("--block-size", type=int, help="tokens per block (one training example)")
    sizes.add_argument("--train-size", type=int,
                       help="training blocks; the steps cycle through them (the defaults: 80 steps of 4 of the 160 "
                            "blocks, so every block is seen twice)")
    sizes.add_argument("--eval-size", type=int, help="held-out blocks the perplexity is measured on")
    sizes.add_argument("--student-layers", type=int, help="teacher layers the student keeps")
    sizes.add_argument("--layer-method", choices=["block_influence", "first_last", "uniform"],
                       help="which layers: those of highest block influence on calibration text (ShortGPT), the "
                            "first and last ones, or evenly spaced ones (docs/students.md)")
    sizes.add_argument("--calibration-blocks", type=int,
                       help="training blocks the teacher's layers are scored on (block_influence)")
    training = parser.add_argument_group("training")
    training.add_argument("--lr", type=float, help="peak learning rate (10%% linear warm-up, then linear decay)")
    training.add_argument("--kd-loss", help="token KD divergence: kl, reverse_kl, jsd, tvd, skew_kl, "
                                            "skew_reverse_kl, or any installed kd_loss plugin")
    training.add_argument("--kd-params", type=_json_object, default={},
                          help="the divergence's parameters as JSON, e.g. '{\"beta\": 0.5}' for jsd")
    training.add_argument("--temperature", type=float, help="KD temperature")
    training.add_argument("--hard-label-weight", type=float,
                          help="weight of the distilled student's own next-token loss beside KD")
    training.add_argument("--kd-chunk-size", type=int,
                          help="positions per chunk of chunked token KD (peak memory grows with it)")
    training.add_argument("--cache-top-k", type=int, metavar="K",
                          help="the teacher-output cache keeps the K largest log-probabilities per position "
                               "(0: all 49,152 logits, 98 KB per token)")
    training.add_argument("--cache-missing-mass", choices=["spread", "zero"], default="zero",
                          help="top-k cache: the teacher's probability outside the top K dropped and the top K "
                               "renormalised, or spread evenly over the other tokens (docs/teacher-cache.md)")
    training.add_argument("--no-teacher-cache", action="store_true",
                          help="run the teacher in every distilled student's training instead of once, ahead of them")
    training.add_argument("--on-policy", type=float, default=0.0, metavar="LAMBDA",
                          help="also train an on-policy (GKD) student per seed: with probability LAMBDA a batch's "
                               "second halves are replaced by the student's samples, scored by the teacher")
    training.add_argument("--sample-temperature", type=float, default=1.0,
                          help="sampling temperature of on-policy continuations")
    training.add_argument("--eval-every", type=int, help="held-out evaluation every this many steps")
    training.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                          help="one distilled and one plain student per seed (the seed orders the blocks)")
    output = parser.add_argument_group("output")
    output.add_argument("--prompt", default=PROMPT, help="the prompt every model continues greedily")
    output.add_argument("--new-tokens", type=int, default=32,
                        help="tokens generated after the prompt; their decoding steps give the latency")
    output.add_argument("--output-dir", type=Path, default=Path("distill-demo-lm"),
                        help="TensorBoard logs, the plot and results.json go here")
    output.add_argument("--cache-dir", type=Path, default=None,
                        help="where the dequantised teacher and its output cache are kept "
                             "(default: $DISTILL_CACHE_DIR, "
                             "$XDG_CACHE_HOME/distill or ~/.cache/distill)")
    output.add_argument("--no-cache", action="store_true",
                        help="dequantise the teacher again and keep nothing between runs (the teacher-output cache "
                             "goes under OUTPUT_DIR)")
    output.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's final checkpoint under OUTPUT_DIR/runs (about 400 MB per run)")
    output.add_argument("--no-plot", action="store_true", help="skip the PNG plot (and the matplotlib requirement)")
    output.add_argument("--no-progress", action="store_true", help="no progress bars")
    output.add_argument("--threads", type=int, default=LM_DEMO_THREADS,
                        help="CPU threads for torch, whatever the machine has or how busy it is: the perplexities "
                             "depend on it, and docs/demo.md shows those of the default; 1 is slower but safer on "
                             "a busy 2-core machine")
    output.add_argument("--check", action="store_true",
                        help="exit with status 1 unless the distilled student's held-out perplexity is below the "
                             "student alone's for every seed")
    for action in parser._actions:
        if action.dest in DEFAULTS:
            action.help = f"{action.help or action.dest.replace('_', ' ')} (default: {DEFAULTS[action.dest]})"
        elif action.default not in (None, False, argparse.SUPPRESS, {}) and action.help:
            action.help += " (default: %(default)s)"
    return parser


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options from the defaults and check them (sizes against the data happen once it is tokenised)."""
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("steps", "batch_size", "train_size", "eval_size", "eval_every", "student_layers", "new_tokens",
                 "kd_chunk_size", "calibration_blocks"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.cache_top_k < 0:
        raise ValueError(f"--cache-top-k must be >= 0 (0: dense logits), got {args.cache_top_k}")
    if args.block_size < 4:
        raise ValueError(f"--block-size must be at least 4, got {args.block_size}")
    if args.student_layers > TEACHER_LAYERS:
        raise ValueError(f"--student-layers can be at most {TEACHER_LAYERS} (the teacher's layers), "
                         f"got {args.student_layers}")
    for name in ("lr", "temperature", "sample_temperature"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.hard_label_weight < 0:
        raise ValueError(f"--hard-label-weight must be >= 0, got {args.hard_label_weight}")
    if not 0 <= args.on_policy <= 1:
        raise ValueError(f"--on-policy is a probability (GKD's lambda) in [0, 1], got {args.on_policy}")
    from pydantic import ValidationError

    from distill_core import DistillationConfig

    try:  # an unknown divergence or a bad parameter fails now, not after the teacher is loaded
        DistillationConfig(**distill_fields(args))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"--kd-loss/--kd-params ({where}): {error['msg']}") from None
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    return args


def distill_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ``DistillationConfig`` of the distilled students, from the options (the cache is added by the runner)."""
    return {"kd_loss_type": args.kd_loss, "kd_loss_params": args.kd_params, "temperature": args.temperature,
            "kd_loss_weight": 1.0, "hard_label_weight": args.hard_label_weight,
            "token_kd_chunk_size": args.kd_chunk_size}


def check_requirements(args: argparse.Namespace) -> None:
    """Fail before any work if a package the run needs is missing, naming the install command."""
    require_module("transformers", 'pip install "transformers>=4.40"', "distill demo --task lm")
    require_module("gguf", "pip install gguf", "reading the SmolLM2 teacher's GGUF file")
    require_module("accelerate", "pip install accelerate", "loading the SmolLM2 teacher's GGUF file")
    if not args.no_plot:
        require_module("matplotlib", 'pip install "matplotlib>=3.7"  (or run with --no-plot)', "the demo's plot")
    SMOLLM2.path()
    BBC_NEWS.path()


def run_lm_demo_cli(argv: Sequence[str] | None = None) -> int:
    """Run ``distill demo --task lm`` with the remaining arguments ``argv``; return the exit status."""

    def prepare(args: argparse.Namespace) -> None:
        resolve_options(args)
        check_requirements(args)

    def run(args: argparse.Namespace) -> bool:
        from distill_core.demo.lm.runner import run_lm_demo

        return run_lm_demo(args)

    # OptionError: a size beyond the data's pools, found once the text is tokenised
    return run_command(build_parser(), list(sys.argv[1:] if argv is None else argv), prepare=prepare, run=run,
                       usage_errors=(OptionError,))
