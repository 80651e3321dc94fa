"""Zero-shot held-out perplexity of students cut from SmolLM2-135M-Instruct, by each rule; prints JSON.

    PYTHONPATH=. python benchmarks/student_pruning.py [--layers 15] [--png layers.png]

The text is the LM demo's split (distill_core/demo/lm/data.py): 16 training blocks of 128 tokens
calibrate, 32 held-out blocks score. Students keep 15 of the 30 layers by first/last, uniform and
block influence, plus a width-pruned student of all 30 layers (6 of 9 heads, 2 of 3 key/value
groups, MLP channels chosen so its parameter count is about the depth-pruned ones'). No training:
this is how good a start each rule gives distillation. The teacher is dequantised once and cached
(distill_core/demo/lm/models.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from distill_core.demo.lm.data import lm_splits
from distill_core.demo.lm.measure import evaluate
from distill_core.demo.lm.models import load_teacher
from distill_core.demo.teacher_store import cache_root
from distill_core.students import build_student, calibrate, layer_table, plan_student, plot_layer_scores
from distill_core.students.text import block_batches


def parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def width_to_match(teacher: torch.nn.Module, target: int, heads: int, kv_heads: int) -> int:
    """Return the MLP width (a multiple of 32) whose all-layer, ``heads``-head student is nearest ``target``."""
    config = teacher.config
    head_dim = config.hidden_size // config.num_attention_heads
    attention = config.hidden_size * head_dim * 2 * (heads + kv_heads)
    per_channel = 3 * config.hidden_size
    outside = parameters(teacher) - config.num_hidden_layers * (
        config.hidden_size * head_dim * 2 * (config.num_attention_heads + config.num_key_value_heads)
        + per_channel * config.intermediate_size)
    channels = (target - outside) / config.num_hidden_layers - attention
    return max(32, min(config.intermediate_size, int(round(channels / per_channel / 32)) * 32))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=15)
    parser.add_argument("--png", help="also write the block-influence bar chart here")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    say = lambda text: print(text, file=sys.stderr)  # noqa: E731
    teacher, tokenizer, _ = load_teacher(cache_root(), say, progress=False)
    train, held_out = lm_splits(tokenizer, block_size=128, train_size=16, eval_size=32)
    started = time.perf_counter()
    scores = calibrate(teacher, block_batches(train, batch_size=4), total=4)
    calibration_seconds = time.perf_counter() - started
    teacher_scores, _ = evaluate(teacher, held_out)
    rows = [{"student": "teacher", "layers": list(range(teacher.config.num_hidden_layers)),
             "parameters": parameters(teacher), "perplexity": round(teacher_scores.perplexity, 2)}]
    depth_parameters = None
    for method in ("first_last", "uniform", "block_influence"):
        plan = plan_student(teacher, layers=args.layers, method=method, scores=scores)
        student = build_student(teacher, plan, teacher_name="SmolLM2-135M-Instruct")
        held, _ = evaluate(student, held_out)
        depth_parameters = parameters(student)
        rows.append({"student": f"depth {method}", "layers": plan.layers, "parameters": depth_parameters,
                     "perplexity": round(held.perplexity, 2)})
        say(f"{method}: {plan.layers} perplexity {held.perplexity:,.1f}")
        if method == "block_influence":
            say(layer_table(scores.block_influence, plan.layers))
            if args.png:
                plot_layer_scores(scores.block_influence, plan.layers, args.png,
                                  title=f"SmolLM2-135M block influence ({args.layers} of 30 kept, filled)")
    intermediate = width_to_match(teacher, depth_parameters, 6, 2)
    plan = plan_student(teacher, heads=6, kv_heads=2, intermediate=intermediate, scores=scores)
    student = build_student(teacher, plan, teacher_name="SmolLM2-135M-Instruct")
    held, _ = evaluate(student, held_out)
    rows.append({"student": f"width: 6/9 heads, 2/3 kv, {intermediate}/1536 MLP", "layers": plan.layers,
                 "parameters": parameters(student), "perplexity": round(held.perplexity, 2)})
    say(f"width: perplexity {held.perplexity:,.1f}")
    print(json.dumps({"teacher": "SmolLM2-135M-Instruct (float32)", "calibration_blocks": len(train),
                      "held_out_blocks": len(held_out), "block_size": 128,
                      "calibration_seconds": round(calibration_seconds, 1),
                      "block_influence": [round(value, 4) for value in scores.block_influence],
                      "students": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
