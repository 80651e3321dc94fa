"""Training with and without the teacher-output cache, side by side, and the bytes a cached LM token costs.

Glue-like workload: a 6-layer BERT teacher of width 384 and a 3-layer student of width 192 (both
with the BERT vocabulary of 30,522 entries), batches of 32 sequences padded to 128 tokens (each
example 64 to 128 real tokens), a shuffled DataLoader, KD on the class logits (ce, T = 4) and a
hidden-state match of teacher layer 6 to student layer 3 through a linear projection. Three epochs
each way:

- uncached: the teacher runs on every batch;
- cached: ``DistillationConfig(teacher_cache=<a temporary directory>)``; epoch 1 runs the teacher
  and stores its logits, layer-6 hidden states and masks per example; epochs 2 and 3 read them back.

Time: both variants in one child process, one epoch of each in turn (``train(num_epochs=1)`` three
times inside one ``with distiller:`` session each, so the cache stays open), so load from elsewhere
on the machine hits both alike; an epoch is timed around its ``train`` call (its end-of-training
checkpoint included, for both alike). Memory: each variant alone in a child process (a fresh heap)
for three epochs; its peak resident size (``ru_maxrss``, mapped cache pages included). Reported:
``epoch_s_uncached`` and ``epoch_s_cached``, the means of epochs 2-3 (epoch 1 of the cached run
builds the cache: ``epoch1_s_cached``), ``speedup``, ``cache_bytes`` (the directory on disk), and the
peak resident sizes.

LM storage: a causal LM teacher with SmolLM2's vocabulary (V = 49,152; 2 layers of width 64,
random weights: the bytes do not depend on them) and a top-k cache at k = 64 (bfloat16 values,
uint16 indices) built ahead of training over 64 sequences of 128 tokens. ``bytes_per_token`` is
everything in the teacher's cache folder (payloads, 64-byte records, meta.json) over the token rows
stored, as ``distill cache info`` reports it.

    python benchmarks/teacher_cache.py            # readable summary
    python benchmarks/teacher_cache.py --json     # one JSON line
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_core import Distillation, DistillationConfig, TrainingConfig  # noqa: E402

EPOCHS = 3


def glue_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import BertConfig, BertForSequenceClassification

    def bert(width: int, layers: int, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=30_522,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=width // 64,
            intermediate_size=width * 4,
            max_position_embeddings=512,
            num_labels=2,
            attn_implementation="eager",
        )
        return BertForSequenceClassification(config)

    return bert(384, 6, 0), bert(192, 3, 1)


def glue_data(batches: int, batch_size: int, length: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    examples = []
    for _ in range(batches * batch_size):
        real = int(torch.randint(length // 2, length + 1, (1,), generator=generator))
        ids = torch.zeros(length, dtype=torch.long)
        ids[:real] = torch.randint(1000, 30_000, (real,), generator=generator)
        mask = (torch.arange(length) < real).long()
        examples.append(
            {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (), generator=generator)}
        )
    return examples


def adaptor(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, Any]:
    return {"logits": outputs.logits, "hidden": outputs.hidden_states, "inputs_mask": batch["attention_mask"]}


def make_distiller(args: argparse.Namespace, folder: str, cached: bool) -> tuple[Distillation, torch.nn.Module]:
    teacher, student = glue_models()
    config = DistillationConfig(
        temperature=4,
        kd_loss_type="ce",
        intermediate_matches=[
            {"layer_T": 6, "layer_S": 3, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 192, 384]}
        ],
        teacher_cache=str(Path(folder) / "cache") if cached else None,
    )
    training = TrainingConfig(
        output_dir=str(Path(folder) / ("cached" if cached else "uncached")),
        device=args.device,
        progress_bar=False,
        log_steps=10**6,
        overwrite_output_dir=True,  # the timing trains one epoch per train() call: each a new run in one folder
    )
    return Distillation(training, config, teacher, student, adaptor, adaptor), student


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timing_child(args: argparse.Namespace) -> dict[str, Any]:
    """Both variants in one process, epoch by epoch in turn, so load from elsewhere hits both alike."""
    loader = torch.utils.data.DataLoader(
        glue_data(args.batches, args.batch_size, args.length), batch_size=args.batch_size, shuffle=True
    )
    times: dict[str, list[float]] = {"uncached": [], "cached": []}
    with tempfile.TemporaryDirectory() as folder:
        runs = {name: make_distiller(args, folder, name == "cached") for name in times}
        optimizers = {name: torch.optim.AdamW(student.parameters(), lr=1e-4) for name, (_, student) in runs.items()}
        for distiller, _ in runs.values():
            distiller.__enter__()  # one session per variant: the cache stays open from epoch to epoch
        torch.manual_seed(0)
        for _ in range(EPOCHS):
            for name, (distiller, _) in runs.items():
                _sync(args.device)
                started = time.perf_counter()
                distiller.train(optimizers[name], None, loader, num_epochs=1, output_hidden_states=True)
                _sync(args.device)
                times[name].append(time.perf_counter() - started)
        summary = runs["cached"][0].teacher_cache.summary()["0"]
        for distiller, _ in runs.values():
            distiller.__exit__(None, None, None)
    return {"epoch_s": times, "cache": summary}


def memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """One variant alone, three epochs: its peak resident size and the cache on disk."""
    loader = torch.utils.data.DataLoader(
        glue_data(args.batches, args.batch_size, args.length), batch_size=args.batch_size, shuffle=True
    )
    with tempfile.TemporaryDirectory() as folder:
        distiller, student = make_distiller(args, folder, args.child == "memory-cached")
        torch.manual_seed(0)
        distiller.train(
            torch.optim.AdamW(student.parameters(), lr=1e-4), None, loader, num_epochs=EPOCHS, output_hidden_states=True
        )
        cache = Path(folder) / "cache"
        cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cache_bytes": cache_bytes}


def lm_child(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill_core.teacher_cache.info import describe_cache

    def llama(width: int, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=49_152,
            hidden_size=width,
            intermediate_size=width * 2,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(config).eval()

    generator = torch.Generator().manual_seed(3)
    batches = [
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for ids in torch.randint(3, 49_152, (args.lm_sequences // 8, 8, 128), generator=generator)
    ]
    with tempfile.TemporaryDirectory() as folder:
        config = DistillationConfig(
            temperature=1, kd_loss_type="kl", teacher_cache={"location": str(Path(folder) / "cache"), "top_k": 64}
        )
        training = TrainingConfig(output_dir=str(Path(folder) / "out"), device=args.device, progress_bar=False)
        distiller = Distillation(training, config, llama(64, 0), llama(32, 1), None, None)
        started = time.perf_counter()
        distiller.build_teacher_cache(batches)
        seconds = time.perf_counter() - started
        info = describe_cache(Path(folder) / "cache", verify=True)["teachers"]["teacher-0"]
    payload = sum(shard["data_bytes"] - 64 for shard in info["shards"].values())
    return {
        "bytes_per_token": info["bytes_per_token"],
        "payload_bytes_per_token": payload / info["tokens"],
        "tokens": info["tokens"],
        "build_s": seconds,
    }


def run_child(args: argparse.Namespace, child: str) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        child,
        "--batches",
        str(args.batches),
        "--batch-size",
        str(args.batch_size),
        "--length",
        str(args.length),
        "--lm-sequences",
        str(args.lm_sequences),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {child} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=8, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lm-sequences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true")
    children = {"timing": timing_child, "memory-uncached": memory_child, "memory-cached": memory_child, "lm": lm_child}
    parser.add_argument("--child", choices=list(children), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(children[args.child](args)))
        return
    timing, uncached, cached, lm = (run_child(args, child) for child in children)
    uncached["epoch_s"], cached["epoch_s"] = timing["epoch_s"]["uncached"], timing["epoch_s"]["cached"]
    warm_uncached = statistics.mean(uncached["epoch_s"][1:])
    warm_cached = statistics.mean(cached["epoch_s"][1:])
    result = {
        "device": args.device,
        "threads": args.threads,
        "workload": {
            "teacher": "BERT 6 layers x 384",
            "student": "BERT 3 layers x 192",
            "batch": args.batch_size,
            "length": args.length,
            "batches_per_epoch": args.batches,
            "epochs": EPOCHS,
            "losses": "kd ce T=4 + hidden_mse layer 6 -> 3 (linear 192->384)",
        },
        "epoch_s_uncached": warm_uncached,
        "epoch_s_cached": warm_cached,
        "speedup": warm_uncached / warm_cached,
        "epochs_s_uncached": uncached["epoch_s"],
        "epochs_s_cached": cached["epoch_s"],
        "epoch1_s_cached": cached["epoch_s"][0],
        "cache_bytes": cached["cache_bytes"],
        "cache_entries": timing["cache"]["entries"],
        "peak_rss_mb_uncached": uncached["peak_rss_mb"],
        "peak_rss_mb_cached": cached["peak_rss_mb"],
        "bytes_per_token": lm["bytes_per_token"],
        "lm": {"vocab": 49_152, "top_k": 64, **lm},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"device {args.device}, {args.threads} thread(s), {args.batches} batches of {args.batch_size} x {args.length} "
        f"per epoch, {EPOCHS} epochs"
    )
    print(f"{'':<10}{'epochs (s)':>28}{'mean of 2-3 (s)':>18}{'peak RSS (MB)':>16}")
    for name, run, warm in (("uncached", uncached, warm_uncached), ("cached", cached, warm_cached)):
        epochs = ", ".join(f"{value:.1f}" for value in run["epoch_s"])
        print(f"{name:<10}{epochs:>28}{warm:>18.2f}{run['peak_rss_mb']:>16.0f}")
    print(f"speedup {result['speedup']:.2f}x; cache on disk {cached['cache_bytes'] / 2**20:.1f} MiB")
    print(
        f"LM top-64 cache (V = 49,152): {lm['bytes_per_token']:.1f} bytes per token "
        f"({lm['payload_bytes_per_token']:.1f} of payload) over {lm['tokens']:,} tokens"
    )


if __name__ == "__main__":
    main()
