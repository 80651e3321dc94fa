"""Token-level KD over a large vocabulary: chunked (``distill_core.terms.token_kd``) against full logits.

One forward + backward of the ``jsd`` KD loss (beta 0.5, T = 1) over 4,096 positions of an LM with
SmolLM2-135M's sizes: vocabulary V = 49,152, hidden width 576. The student's hidden rows and its
output head (V, 576, no bias, as SmolLM2's tied head) require grad; the teacher's hidden rows and
head are fixed. float32 on the CPU.

- naive:   ``logits_S = hidden_S · W_Sᵀ`` and ``logits_T = hidden_T · W_Tᵀ`` (both (4096, V)), then
           the same ``jsd`` plugin on all rows, ``.backward()``.
- chunked: ``chunked_token_kd`` with the same plugin and its default chunk (512 rows at this V).
Both optimise the mean over positions (the chunked sum divided by N), the value a training step uses.

Each variant runs alone in its own child process (so neither inherits the other's heap): a warm-up
on 64 rows (first-call costs), then the measured step on all rows.

Peak memory, as reported: the child's peak resident set size at the end (``ru_maxrss``, tracked by
the kernel, so no short spike is missed, unlike a sampling thread) minus its resident size right
after the inputs were allocated (``/proc/self/statm``): what the KD step adds on top of its inputs,
the gradients (``W_S.grad``, ``hidden_S.grad``) and every temporary included. (``ru_maxrss`` is a
high-water mark over the process's life; the step's peak is far above anything before it, so the
difference is the step's own.) Time: wall-clock of the measured forward + backward. Each child
saves its loss and gradients; the parent reports the largest absolute difference between the two
over the value, ``hidden_S.grad`` and ``W_S.grad``.

    python benchmarks/lm_kd_memory.py            # readable summary
    python benchmarks/lm_kd_memory.py --json     # one JSON line
    python benchmarks/lm_kd_memory.py --sweep    # chunked peak memory and time per chunk size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_core.terms.token_kd import (  # noqa: E402
    chunked_token_kd,
    default_chunk_size,
    kd_loss_for_rows,
    teacher_logits_from_head,
)

SWEEP_CHUNKS = (256, 512, 1024, 2048, 4096)
WARMUP_ROWS = 64


def current_rss_mb() -> float:
    """Resident set size of this process now, from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_inputs(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Hidden rows and heads, drawn in place so that no temporary copy raises the baseline."""
    generator = torch.Generator().manual_seed(0)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).mul_(std)

    # Head std chosen so logits have a standard deviation of about 2, like a trained LM's.
    return {
        "hidden_S": normal(args.rows, args.hidden, std=1.0).requires_grad_(True),
        "weight_S": normal(args.vocab, args.hidden, std=2.0 / args.hidden**0.5).requires_grad_(True),
        "hidden_T": normal(args.rows, args.teacher_hidden, std=1.0),
        "weight_T": normal(args.vocab, args.teacher_hidden, std=2.5 / args.teacher_hidden**0.5),
    }


def step(variant: str, inputs: dict[str, torch.Tensor], chunk_size: int) -> torch.Tensor:
    """One forward + backward of the mean KD loss over all rows; return the (detached) loss."""
    kd_loss = kd_loss_for_rows("jsd", {"beta": 0.5})
    hidden_S, weight_S = inputs["hidden_S"], inputs["weight_S"]
    rows = hidden_S.shape[0]
    if variant == "naive":
        logits_S = F.linear(hidden_S, weight_S)
        with torch.no_grad():
            logits_T = F.linear(inputs["hidden_T"], inputs["weight_T"])
        loss = kd_loss(logits_S, logits_T, 1.0)
    else:
        teacher_chunk = teacher_logits_from_head(inputs["hidden_T"], inputs["weight_T"])
        kd_sum, _ = chunked_token_kd(
            kd_loss, hidden_S, weight_S, None, teacher_chunk, temperature=1.0, chunk_size=chunk_size
        )
        loss = kd_sum / rows
    loss.backward()
    return loss.detach()


def child(args: argparse.Namespace) -> None:
    inputs = build_inputs(args)
    baseline = current_rss_mb()
    # Warm up on a few rows (first-call costs of the kernels), then time one full step.
    few_rows = {**inputs, "hidden_S": inputs["hidden_S"][:WARMUP_ROWS], "hidden_T": inputs["hidden_T"][:WARMUP_ROWS]}
    step(args.child, few_rows, args.chunk_size)
    for name in ("hidden_S", "weight_S"):
        inputs[name].grad = None
    start = time.perf_counter()
    loss = step(args.child, inputs, args.chunk_size)
    seconds = time.perf_counter() - start
    torch.save(
        {"loss": loss, "grad_hidden": inputs["hidden_S"].grad, "grad_weight": inputs["weight_S"].grad},
        args.out,
    )
    print(json.dumps({"peak_mb": peak_rss_mb() - baseline, "seconds": seconds, "baseline_mb": baseline}))


def run_child(args: argparse.Namespace, variant: str, chunk_size: int, out: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", variant, "--out", str(out), "--chunk-size", str(chunk_size)]
    for option in ("rows", "vocab", "hidden", "teacher_hidden", "threads"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{variant} child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def max_abs_diff(path_a: Path, path_b: Path) -> dict[str, float]:
    a, b = torch.load(path_a), torch.load(path_b)
    return {key: (a[key] - b[key]).abs().max().item() for key in ("loss", "grad_hidden", "grad_weight")}


def sweep(args: argparse.Namespace, workdir: Path) -> None:
    print(f"rows {args.rows}, V {args.vocab}, width {args.hidden}, jsd float32, {args.threads} thread(s)")
    print(f"{'chunk rows':>10}{'peak (MB)':>12}{'time (s)':>10}")
    naive = run_child(args, "naive", args.rows, workdir / "naive.pt")
    print(f"{'naive':>10}{naive['peak_mb']:>12.0f}{naive['seconds']:>10.2f}")
    for chunk_size in SWEEP_CHUNKS:
        measured = run_child(args, "chunked", chunk_size, workdir / "chunked.pt")
        print(f"{chunk_size:>10}{measured['peak_mb']:>12.0f}{measured['seconds']:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096, help="valid positions (N)")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576, help="student width")
    parser.add_argument("--teacher-hidden", type=int, default=576, help="teacher width")
    parser.add_argument("--chunk-size", type=int, help="rows per chunk (default: distill's default for the vocabulary)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="measure the chunked path for several chunk sizes")
    parser.add_argument("--child", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.chunk_size is None:
        args.chunk_size = default_chunk_size(args.vocab)
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.sweep:
            sweep(args, workdir)
            return
        naive = run_child(args, "naive", args.chunk_size, workdir / "naive.pt")
        chunked = run_child(args, "chunked", args.chunk_size, workdir / "chunked.pt")
        diffs = max_abs_diff(workdir / "naive.pt", workdir / "chunked.pt")
    result = {
        "rows": args.rows,
        "vocab": args.vocab,
        "hidden": args.hidden,
        "chunk_size": args.chunk_size,
        "threads": args.threads,
        "naive_peak_mb": round(naive["peak_mb"], 1),
        "chunked_peak_mb": round(chunked["peak_mb"], 1),
        "peak_ratio": round(chunked["peak_mb"] / naive["peak_mb"], 4),
        "naive_s": round(naive["seconds"], 3),
        "chunked_s": round(chunked["seconds"], 3),
        "time_ratio": round(chunked["seconds"] / naive["seconds"], 4),
        "max_abs_diff": max(diffs.values()),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"jsd (beta 0.5) KD over {args.rows} positions, V {args.vocab}, width {args.hidden}, float32 CPU, "
        f"{args.threads} thread(s); chunked with {args.chunk_size} rows per chunk"
    )
    print(f"{'':<9}{'peak memory (MB)':>18}{'forward+backward (s)':>22}")
    print(f"{'naive':<9}{naive['peak_mb']:>18.0f}{naive['seconds']:>22.2f}")
    print(f"{'chunked':<9}{chunked['peak_mb']:>18.0f}{chunked['seconds']:>22.2f}")
    print(f"ratio chunked/naive: memory {result['peak_ratio']:.3f}, time {result['time_ratio']:.3f}")
    print(
        f"largest absolute difference: loss {diffs['loss']:.1e}, hidden grad {diffs['grad_hidden']:.1e}, "
        f"head grad {diffs['grad_weight']:.1e}"
    )


if __name__ == "__main__":
    main()
