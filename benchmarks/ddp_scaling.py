"""Training throughput at world size 1 and 2 under torchrun (gloo, CPU, one thread per process).

The same distillation (a 4-layer BERT teacher and a 2-layer student of width 128, KD plus a hidden
match through a projection, batch 16 x 64 tokens per process) runs once with ``torchrun
--nproc_per_node 1`` and once with ``--nproc_per_node 2``. Each process keeps one thread, so two
processes use the two cores a 2-core machine has. The first steps (start-up, first-step checks,
the DDP bucket rebuild) are left out; throughput is training examples per second over the rest, all
processes together. ``efficiency = throughput_2 / (2 * throughput_1)``: 1.0 is perfect scaling.

One run of each size moves by about 5% from one run to the next on a shared 2-core machine, so the
two sizes run alternately ``--repeats`` times (1, 2, 1, 2, ...) and the throughputs are the medians;
``efficiency_per_repeat`` gives each pair's own ratio.

    python benchmarks/ddp_scaling.py            # a table
    python benchmarks/ddp_scaling.py --json     # one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 3


def child(args: argparse.Namespace) -> None:
    """One process of a torchrun group: train, then rank 0 prints examples per second."""
    import torch

    sys.path.insert(0, str(REPO))
    from transformers import BertConfig, BertForSequenceClassification

    from distill_core import Distillation, DistillationConfig, TrainingConfig

    torch.set_num_threads(1)

    def bert(layers: int, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=1000,
            hidden_size=args.width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=args.width * 4,
            max_position_embeddings=args.length,
            num_labels=4,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation="eager",
        )
        return BertForSequenceClassification(config)

    teacher, student = bert(4, 0), bert(2, 1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    examples = args.batch * world * (args.steps + WARMUP_STEPS)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (examples, args.length), generator=generator)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(args.length, dtype=torch.long)} for i in range(examples)]
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch)

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "inputs_mask": batch["attention_mask"]}

    stamps: list[float] = []

    def stamp(batch):
        stamps.append(time.perf_counter())
        return batch

    with tempfile.TemporaryDirectory() as out:
        distiller = Distillation(
            TrainingConfig(output_dir=out, device="cpu", progress_bar=False, log_steps=1000, ckpt_steps=10_000),
            DistillationConfig(
                temperature=2,
                intermediate_matches=[
                    {
                        "layer_T": 4,
                        "layer_S": 2,
                        "feature": "hidden",
                        "loss": "hidden_mse",
                        "proj": ["linear", args.width, args.width],
                    }
                ],
            ),
            teacher,
            student,
            adaptor,
            adaptor,
        )
        with distiller:
            distiller.train(
                torch.optim.AdamW(student.parameters(), lr=1e-4),
                None,
                loader,
                num_epochs=1,
                batch_postprocessor=stamp,
                output_hidden_states=True,
            )
        end = time.perf_counter()
    if int(os.environ.get("RANK", "0")) == 0:
        timed = stamps[WARMUP_STEPS:] + [end]
        seconds = timed[-1] - timed[0]
        print(json.dumps({"examples_per_s": args.batch * world * (len(timed) - 1) / seconds, "steps": len(timed) - 1}))


def run_world(size: int, args: argparse.Namespace) -> float:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(size),
        __file__,
        "--child",
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--width",
        str(args.width),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISTILL_PLUGIN_DISTRIBUTIONS": "distill"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"world size {size} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    line = [row for row in done.stdout.splitlines() if row.startswith("{")][-1]
    return float(json.loads(line)["examples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed optimisation steps per run")
    parser.add_argument("--batch", type=int, default=16, help="examples per process and step")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each world size")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    runs_1: list[float] = []
    runs_2: list[float] = []
    for _ in range(args.repeats):
        runs_1.append(run_world(1, args))
        runs_2.append(run_world(2, args))
    throughput_1, throughput_2 = statistics.median(runs_1), statistics.median(runs_2)
    result = {
        "throughput_1": round(throughput_1, 2),
        "throughput_2": round(throughput_2, 2),
        "efficiency": round(throughput_2 / (2 * throughput_1), 4),
        "efficiency_per_repeat": [round(two / (2 * one), 4) for one, two in zip(runs_1, runs_2)],
        "throughputs_1": [round(value, 2) for value in runs_1],
        "throughputs_2": [round(value, 2) for value in runs_2],
        "cpu_count": os.cpu_count(),
        "shape": {"batch_per_process": args.batch, "length": args.length, "width": args.width, "steps": args.steps},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"world size 1: {throughput_1:8.1f} examples/s")
    print(f"world size 2: {throughput_2:8.1f} examples/s")
    print(f"efficiency:   {result['efficiency']:.3f}  (throughput_2 / (2 x throughput_1); target >= 0.8)")
    print(f"each pair's:  {', '.join(f'{value:.3f}' for value in result['efficiency_per_repeat'])}")


if __name__ == "__main__":
    main()
