"""distill's training step against a hand-written PyTorch loop computing the same loss.

Both distil the same tiny BERT teacher into the same student with KD (ce, T=4), a hidden-state
match through a linear projection and an attention match, from identical initial weights (the
projection too) and identical batches.

Time: the two run interleaved, step by step, in one process: distill's ``batch_postprocessor``
runs one hand-written step before each distill step, so load from elsewhere on the machine hits
both alike. Each side's per-step times are pooled over rounds (the first steps of a round are warm
up and dropped); the report gives the medians and their ratio. At the end the two students are
compared: they must agree to float tolerance, which shows both computed the same thing.

The hand loop masks by multiplying with the mask, as one usually writes it; distill's losses select
instead, setting dropped entries to 0 before any arithmetic, so that a NaN or infinity in padding (a
model's -inf attention scores, the fully masked rows of a left-padded causal LM) can reach neither
the loss nor its gradient, and ``0 · log 0`` counts as 0. The squared-error losses (hidden_mse,
attention_mse) select the differences before they are squared, by a bitwise AND on the floats' bits
inside one fused autograd function (``distill_plugins_losses/_common.py``); the KD loss selects its
``0 · log 0`` terms with ``torch.where``. ``time_ratio`` is against that plain loop. A second
series, ``time_ratio_nan_safe_hand``, runs against a hand loop that keeps padding out as distill
does, written with ``torch.where`` (the same values, bit for bit, as the bitwise select): what the
framework costs apart from that guarantee.

Memory: each variant alone in a child process. On a GPU, ``torch.cuda.max_memory_allocated``; on
the CPU, how far training raises the child's peak resident size, with 8x the batch and 4x the
length so that activations (not the interpreter) dominate.

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
from typing import Any

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_core import DistillationConfig, Distillation, TrainingConfig  # noqa: E402

TEMPERATURE = 4.0
WARMUP_STEPS = 3


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, list[dict[str, torch.Tensor]]]:
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
            hidden_size=args.hidden_teacher,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=args.hidden_teacher * 4,
            **common,
        )
    )
    student = BertForSequenceClassification(
        BertConfig(
            hidden_size=args.hidden_student,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=args.hidden_student * 4,
            **common,
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


def adaptor(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, Any]:
    return {
        "logits": outputs.logits,
        "hidden": outputs.hidden_states,
        "attention": outputs.attentions,
        "inputs_mask": batch["attention_mask"],
    }


def make_distiller(teacher: torch.nn.Module, student: torch.nn.Module, device: torch.device, out: str) -> Distillation:
    config = DistillationConfig(
        temperature=TEMPERATURE,
        kd_loss_type="ce",
        intermediate_matches=[
            {
                "layer_T": 4,
                "layer_S": 2,
                "feature": "hidden",
                "loss": "hidden_mse",
                "weight": 1,
                "proj": ["linear", student.config.hidden_size, teacher.config.hidden_size],
            },
            {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 1},
        ],
    )
    train_config = TrainingConfig(output_dir=out, device=str(device), progress_bar=False, log_steps=50)
    return Distillation(train_config, config, teacher, student, adaptor, adaptor)


class HandWritten:
    """The same distillation as a plain PyTorch loop body, written out by hand.

    ``nan_safe``: keep padding out as distill's losses do, selecting the differences to 0 before they
    are squared (a NaN or infinity in padding, or a ``0 · log 0``, reaches neither the loss nor its
    gradient), instead of multiplying by the mask. Written with ``torch.where``, as one would by
    hand; distill's squared errors select the same values by a bitwise AND on the floats' bits.
    """

    def __init__(
        self, teacher: torch.nn.Module, student: torch.nn.Module, projection: torch.nn.Module, nan_safe: bool = False
    ) -> None:
        self.teacher, self.student, self.projection = teacher.eval(), student.train(), projection.train()
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        self.optimizer.add_param_group({"params": list(projection.parameters())})
        self.nan_safe = nan_safe

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            out_T = self.teacher(**batch, output_hidden_states=True, output_attentions=True)
        out_S = self.student(**batch, output_hidden_states=True, output_attentions=True)
        if self.nan_safe:
            self._nan_safe_losses(batch, out_T, out_S).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return
        soft_T = F.softmax(out_T.logits / TEMPERATURE, -1)
        kd = -(soft_T * F.log_softmax(out_S.logits / TEMPERATURE, -1)).sum(-1).mean()
        mask = batch["attention_mask"].float()
        width = out_T.hidden_states[4].shape[-1]
        squared = (self.projection(out_S.hidden_states[2]) - out_T.hidden_states[4]).pow(2)
        hidden = (squared * mask.unsqueeze(-1)).sum() / (mask.sum() * width)
        att_S, att_T = out_S.attentions[1], out_T.attentions[3]  # with a mask, the mask alone decides
        pairs = (mask.unsqueeze(-1) * mask.unsqueeze(-2)).unsqueeze(1)
        attention = ((att_S - att_T).pow(2) * pairs).sum() / (att_S.shape[1] * mask.sum(1).pow(2).sum())
        (kd + hidden + attention).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _nan_safe_losses(self, batch: dict[str, torch.Tensor], out_T: Any, out_S: Any) -> torch.Tensor:
        soft_T = F.softmax(out_T.logits / TEMPERATURE, -1)
        log_S = F.log_softmax(out_S.logits / TEMPERATURE, -1)
        kd = -torch.where(soft_T != 0, soft_T * log_S, 0.0).sum(-1).mean()
        keep = batch["attention_mask"] != 0
        width = out_T.hidden_states[4].shape[-1]
        # the difference is selected before it is squared, so padding reaches neither value nor gradient
        difference = self.projection(out_S.hidden_states[2]) - out_T.hidden_states[4]
        hidden = torch.where(keep.unsqueeze(-1), difference, 0.0).pow(2).sum() / (keep.sum() * width).clamp_min(1)
        att_S, att_T = out_S.attentions[1], out_T.attentions[3]
        pairs = (keep.unsqueeze(-1) & keep.unsqueeze(-2)).unsqueeze(1)
        kept = torch.where(pairs, att_S - att_T, 0.0)
        attention = kept.pow(2).sum() / (pairs.sum() * att_S.shape[1]).clamp_min(1)
        return kd + hidden + attention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # the measurement's own sync, outside the steps it measures


def run_interleaved(
    teacher, student, batches, device, nan_safe: bool = False
) -> tuple[list[float], list[float], float]:
    """Alternate one hand-written step and one distill step; return per-step times and the weight gap."""
    hand_student = copy.deepcopy(student)
    times_distill: list[float] = []
    times_hand: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        distiller = make_distiller(teacher, student, device, out)
        projection = copy.deepcopy(distiller.projections[0]).to(device)
        hand = HandWritten(teacher, hand_student, projection, nan_safe=nan_safe)
        last_end: list[float] = []

        def hand_step_then_stamp(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            _sync(device)
            start = time.perf_counter()
            if last_end:
                times_distill.append(start - last_end[0])
            hand.step(batch)
            _sync(device)
            end = time.perf_counter()
            times_hand.append(end - start)
            last_end[:] = [end]
            return batch

        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
        with distiller:
            distiller.train(
                optimizer,
                None,
                batches,
                num_epochs=1,
                batch_postprocessor=hand_step_then_stamp,
                output_hidden_states=True,
                output_attentions=True,
            )
    gap = max((a - b).abs().max().item() for a, b in zip(student.parameters(), hand_student.parameters()))
    return times_distill[WARMUP_STEPS:], times_hand[WARMUP_STEPS + 1 :], gap


def run_alone(variant: str, teacher, student, batches, device) -> None:
    if variant == "hand":
        projection = torch.nn.Linear(student.config.hidden_size, teacher.config.hidden_size).to(device)
        hand = HandWritten(teacher, student, projection)
        for batch in batches:
            hand.step(batch)
        return
    with tempfile.TemporaryDirectory() as out:
        distiller = make_distiller(teacher, student, device, out)
        with distiller:
            distiller.train(
                torch.optim.AdamW(student.parameters(), lr=1e-4),
                None,
                batches,
                num_epochs=1,
                output_hidden_states=True,
                output_attentions=True,
            )


def peak_memory_mb(args: argparse.Namespace, variant: str) -> float:
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
        "--device",
        args.device,
        "--hidden-teacher",
        str(args.hidden_teacher),
        "--hidden-student",
        str(args.hidden_student),
    ]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())


def child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    teacher, student, batches = build(args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run_alone(args.child, teacher, student, batches, device)
        print(torch.cuda.max_memory_allocated() / 2**20)
        return
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_alone(args.child, teacher, student, batches, device)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--hidden-teacher", type=int, default=64)
    parser.add_argument("--hidden-student", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=["distill", "hand"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    device = torch.device(args.device)
    teacher, student, batches = build(args)
    distill_times: list[float] = []
    hand_times: list[float] = []
    safe_distill_times: list[float] = []  # the second series: against the NaN-safe hand loop
    safe_hand_times: list[float] = []
    gaps: list[float] = []
    round_ratios: list[float] = []  # each round's own ratio: how far one measurement moves on this machine
    for _ in range(args.rounds):
        d, h, gap = run_interleaved(copy.deepcopy(teacher), copy.deepcopy(student), batches, device)
        distill_times += d
        hand_times += h
        round_ratios.append(statistics.median(d) / statistics.median(h))
        gaps.append(gap)
        d, h, gap = run_interleaved(copy.deepcopy(teacher), copy.deepcopy(student), batches, device, nan_safe=True)
        safe_distill_times += d
        safe_hand_times += h
        gaps.append(gap)
    step_ms = {"distill": statistics.median(distill_times) * 1e3, "hand": statistics.median(hand_times) * 1e3}
    safe_ms = {
        "distill": statistics.median(safe_distill_times) * 1e3,
        "hand_nan_safe": statistics.median(safe_hand_times) * 1e3,
    }
    memory = {name: peak_memory_mb(args, name) for name in ("distill", "hand")}
    result = {
        "device": str(device),
        "threads": args.threads,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "shape": {
            "batch": args.batch,
            "length": args.length,
            "teacher_width": args.hidden_teacher,
            "student_width": args.hidden_student,
        },
        "step_ms_median": step_ms,
        "step_ms_mean": {"distill": statistics.mean(distill_times) * 1e3, "hand": statistics.mean(hand_times) * 1e3},
        "peak_memory_mb": memory,
        "time_ratio": step_ms["distill"] / step_ms["hand"],
        "time_ratio_per_round": round_ratios,
        # against a hand loop that keeps padding out as distill does: the framework without its guarantees
        "step_ms_median_nan_safe_series": safe_ms,
        "time_ratio_nan_safe_hand": safe_ms["distill"] / safe_ms["hand_nan_safe"],
        "memory_ratio": memory["distill"] / memory["hand"] if memory["hand"] > 0 else float("nan"),
        "max_weight_gap": max(gaps),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"device {device}, {args.threads} thread(s), {args.rounds} rounds x {args.steps} steps, batch "
        f"{args.batch} x {args.length} tokens, teacher width {args.hidden_teacher}, student width "
        f"{args.hidden_student}"
    )
    print(f"{'':<10}{'median step (ms)':>18}{'mean step (ms)':>16}{'training memory (MB)':>22}")
    for name in ("distill", "hand"):
        print(f"{name:<10}{step_ms[name]:>18.2f}{result['step_ms_mean'][name]:>16.2f}{memory[name]:>22.1f}")
    print(f"ratio distill/hand: time {result['time_ratio']:.3f}, memory {result['memory_ratio']:.3f}")
    print(f"time ratio of each round: {', '.join(f'{ratio:.3f}' for ratio in round_ratios)}")
    print(
        f"against a hand loop that keeps padding out as distill does (median step {safe_ms['hand_nan_safe']:.2f} "
        f"ms, distill {safe_ms['distill']:.2f} ms): time {result['time_ratio_nan_safe_hand']:.3f}"
    )
    print(f"largest difference between the two students' weights after training: {result['max_weight_gap']:.2e}")


if __name__ == "__main__":
    main()
