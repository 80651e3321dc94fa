"""distill's training step against a hand-written PyTorch loop computing the same loss.

Both distil the same tiny BERT teacher into the same student with KD (ce, T=4), a hidden-state
match through a linear projection and an attention match, from identical initial weights and
batches. They run side by side in one process, alternating rounds so drift affects both alike; the
step time is the median over rounds of (time between the first and last batch) / steps, which
leaves out setup and the final checkpoint. Peak memory: CUDA's max_memory_allocated on a GPU; on
the CPU, how far training raises the peak resident size of a child process that builds the same
models (with 8x the batch and 4x the length, so activations dominate) and runs only that variant.

    python benchmarks/overhead.py            # prints a table and the ratios
    python benchmarks/overhead.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_core import DistillationConfig, Distillation, TrainingConfig  # noqa: E402

T = 4.0


def build(args: argparse.Namespace) -> tuple:
    global HIDDEN_T, HIDDEN_S
    HIDDEN_T, HIDDEN_S = args.hidden_teacher, args.hidden_student
    torch.manual_seed(0)
    common = dict(
        vocab_size=1000,
        max_position_embeddings=args.length,
        num_labels=4,
        attn_implementation="eager",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    teacher = BertForSequenceClassification(
        BertConfig(
            hidden_size=HIDDEN_T, num_hidden_layers=4, num_attention_heads=4, intermediate_size=HIDDEN_T * 4, **common
        )
    )
    student = BertForSequenceClassification(
        BertConfig(
            hidden_size=HIDDEN_S, num_hidden_layers=2, num_attention_heads=4, intermediate_size=HIDDEN_S * 4, **common
        )
    )
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.steps):
        ids = torch.randint(1, 1000, (args.batch, args.length), generator=generator)
        mask = torch.ones_like(ids)
        mask[: args.batch // 2, args.length * 3 // 4 :] = 0
        batches.append({"input_ids": (ids * mask).to(args.device), "attention_mask": mask.to(args.device)})
    return teacher.to(args.device), student.to(args.device), batches


def adaptor(batch, outputs):
    return {
        "logits": outputs.logits,
        "hidden": outputs.hidden_states,
        "attention": outputs.attentions,
        "inputs_mask": batch["attention_mask"],
    }


def run_distill(teacher, student, batches, device) -> float:
    config = DistillationConfig(
        temperature=T,
        kd_loss_type="ce",
        intermediate_matches=[
            {
                "layer_T": 4,
                "layer_S": 2,
                "feature": "hidden",
                "loss": "hidden_mse",
                "weight": 1,
                "proj": ["linear", HIDDEN_S, HIDDEN_T],
            },
            {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 1},
        ],
    )
    stamps: list[float] = []

    def stamp(batch):
        if device.type == "cuda":
            torch.cuda.synchronize()  # the measurement's own sync, outside the step it measures
        stamps.append(time.perf_counter())
        return batch

    with tempfile.TemporaryDirectory() as out:
        train_config = TrainingConfig(output_dir=out, device=str(device), progress_bar=False, log_steps=50)
        distiller = Distillation(train_config, config, teacher, student, adaptor, adaptor)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        with distiller:
            distiller.train(
                optimizer,
                None,
                batches,
                num_epochs=1,
                batch_postprocessor=stamp,
                output_hidden_states=True,
                output_attentions=True,
            )
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def run_hand_written(teacher, student, batches, device) -> float:
    projection = torch.nn.Linear(HIDDEN_S, HIDDEN_T).to(device)
    torch.nn.init.normal_(projection.weight, std=0.02)
    torch.nn.init.zeros_(projection.bias)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    optimizer.add_param_group({"params": list(projection.parameters())})
    teacher.eval()
    student.train()
    stamps: list[float] = []
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        with torch.no_grad():
            out_T = teacher(**batch, output_hidden_states=True, output_attentions=True)
        out_S = student(**batch, output_hidden_states=True, output_attentions=True)
        kd = -(F.softmax(out_T.logits / T, -1) * F.log_softmax(out_S.logits / T, -1)).sum(-1).mean()
        mask = batch["attention_mask"].float()
        diff = (projection(out_S.hidden_states[2]) - out_T.hidden_states[4]).pow(2)
        hidden = (diff * mask.unsqueeze(-1)).sum() / (mask.sum() * HIDDEN_T)
        pair = mask.unsqueeze(-1) * mask.unsqueeze(-2)
        att_S, att_T = out_S.attentions[1], out_T.attentions[3]
        att_S = torch.where(att_S <= -1e-3, torch.zeros_like(att_S), att_S)
        att_T = torch.where(att_T <= -1e-3, torch.zeros_like(att_T), att_T)
        attention = ((att_S - att_T).pow(2) * pair.unsqueeze(1)).sum() / (att_S.shape[1] * mask.sum(1).pow(2).sum())
        (kd + hidden + attention).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


RUNNERS = {"distill": run_distill, "hand": run_hand_written}


def peak_memory_mb(args: argparse.Namespace, variant: str) -> float:
    device = torch.device(args.device)
    if device.type == "cuda":
        teacher, student, batches = build(args)
        torch.cuda.reset_peak_memory_stats()
        RUNNERS[variant](teacher, student, batches, device)
        return torch.cuda.max_memory_allocated() / 2**20
    # bigger batches than the timing runs, so activations (not the interpreter) dominate the peak
    command = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--steps",
        "8",
        "--batch",
        str(args.batch * 8),
        "--length",
        str(args.length * 4),
        "--threads",
        str(args.threads),
        "--hidden-teacher",
        str(args.hidden_teacher),
        "--hidden-student",
        str(args.hidden_student),
    ]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--hidden-teacher", type=int, default=64)
    parser.add_argument("--hidden-student", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.child:  # a child measures how much one variant's training raises the peak resident size (CPU)
        teacher, student, batches = build(args)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        RUNNERS[args.child](teacher, student, batches, device)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
        return

    teacher, student, batches = build(args)
    times: dict[str, list[float]] = {name: [] for name in RUNNERS}
    for round_index in range(args.rounds + 1):  # round 0 warms up and is dropped
        order = list(RUNNERS) if round_index % 2 == 0 else list(reversed(RUNNERS))
        for name in order:
            step = RUNNERS[name](copy.deepcopy(teacher), copy.deepcopy(student), batches, device)
            if round_index:
                times[name].append(step)
    medians = {name: statistics.median(values) for name, values in times.items()}
    memory = {name: peak_memory_mb(args, name) for name in RUNNERS}
    result = {
        "device": str(device),
        "threads": args.threads,
        "steps": args.steps,
        "rounds": args.rounds,
        "step_ms": {name: value * 1e3 for name, value in medians.items()},
        "step_ms_all_rounds": {name: [v * 1e3 for v in values] for name, values in times.items()},
        "peak_memory_mb": memory,
        "time_ratio": medians["distill"] / medians["hand"],
        "memory_ratio": memory["distill"] / memory["hand"] if memory["hand"] > 0 else float("nan"),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"device {device}, {args.threads} thread(s), {args.steps} steps x {args.rounds} rounds, batch {args.batch}"
        f" x {args.length} tokens, teacher width {args.hidden_teacher}, student width {args.hidden_student}"
    )
    print(f"{'':<14}{'step (ms)':>12}{'training peak RSS / GPU (MB)':>30}")
    for name in RUNNERS:
        print(f"{name:<14}{medians[name] * 1e3:>12.2f}{memory[name]:>30.1f}")
    print(f"ratio distill/hand: time {result['time_ratio']:.3f}, memory {result['memory_ratio']:.3f}")


if __name__ == "__main__":
    main()
