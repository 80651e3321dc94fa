"""The demos' CPU threads: one fixed count, so that what they print does not depend on the machine's load.

torch splits each operation between its threads, and how it splits a reduction (the sum of a loss
over a batch's tokens, a gradient's norm, a weight gradient summed over the tokens) sets the order
of the floating-point additions. 1 and 2 threads therefore give results that differ in the last
bits, and training amplifies such differences: after 40 steps the LM demo's student alone (seed 1)
had held-out perplexity 559.1 on 1 thread and 627.3 on 2, on the same machine, code and data.
Until now the classification demo chose its threads from how busy the cores were when it started
and the LM demo from how many cores it was allowed, so the same command printed other numbers on
another machine, or on the same machine at another moment. The demos now run everything on
:data:`DEMO_THREADS` threads unless ``--threads`` says otherwise, and a given thread count, CPU
kernel set and library versions give the same numbers on every run (docs/demo.md has the spread).

Why 1: it is the count every machine has, so no machine runs the documented setting oversubscribed;
and torch's threads synchronise at every operation, so on a 2-core machine with one core busy
elsewhere 2 threads ran training steps 2 to 3.4 times slower than 1 thread (measured). On idle
cores 2 threads are about 1.75 times faster: ``--threads 2`` buys that speed with other numbers.
"""

from __future__ import annotations

from typing import Any

#: torch threads for everything the classification demo computes, whatever the machine has and however busy it is
DEMO_THREADS = 1
#: the LM demo's: its student (20 of SmolLM2's 30 layers) learns from 40,960 tokens in the 15 minutes the demo
#: may take on 2 cores only with both of them (docs/demo.md); still one fixed count, never chosen by the machine
LM_DEMO_THREADS = 2


def use_threads(count: int) -> None:
    """Run torch's CPU operations (and MKL's, which torch sets with them) on ``count`` threads."""
    import torch

    if count < 1:
        raise ValueError(f"Expected argument `count` to be at least 1 but got {count}")
    torch.set_num_threads(count)


def numerics(threads: int) -> dict[str, Any]:
    """Return what the demos' numbers depend on besides the code and options, for ``results.json``.

    The thread count, the CPU kernels torch dispatches to (``AVX512``, ``AVX2``...: another CPU
    generation rounds differently) and the torch and transformers versions.
    """
    import torch

    try:
        import transformers

        transformers_version: str | None = transformers.__version__
    except ImportError:
        transformers_version = None
    return {"threads": threads, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "transformers": transformers_version}


__all__ = ["DEMO_THREADS", "LM_DEMO_THREADS", "numerics", "use_threads"]
