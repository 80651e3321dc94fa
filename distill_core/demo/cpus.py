"""How many torch threads the demo should use: the cores it may use that other processes leave free.

torch's CPU kernels synchronise their threads at every operation. When another process keeps one
of the cores busy, a thread that waits for a descheduled sibling stalls the whole step: on a
2-core machine with one core busy elsewhere, 2 threads ran a student's training steps 2 to 3 times
slower than 1 thread (while on idle cores 2 threads are about 1.75 times faster than 1). So the
default counts the allowed cores that are busy right now (from ``/proc/stat``, sampled briefly; the
1-minute load average where that is unavailable) and leaves them out.
"""

from __future__ import annotations

import os
import time


def allowed_cpus() -> list[int]:
    """Return the ids of the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> tuple[float, float] | None:
    """Return (busy, total) jiffies summed over ``cpus`` from ``/proc/stat``, or None where unreadable."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{cpu}" for cpu in cpus}
    busy = total = 0.0
    found = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [float(value) for value in fields[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
            total += sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
            busy += sum(values[:8]) - idle
            found += 1
    return (busy, total) if found == len(wanted) else None


def busy_cpus(cpus: list[int], *, interval: float = 0.3) -> float | None:
    """Return how many of ``cpus`` other processes keep busy (e.g. 1.0 = one core), or None if unknown.

    Measured over ``interval`` seconds from ``/proc/stat`` (this process is idle meanwhile); where
    that is unavailable, the 1-minute load average (capped at ``len(cpus)``).
    """
    before = _cpu_times(cpus)
    if before is not None:
        time.sleep(interval)
        after = _cpu_times(cpus)
        if after is not None and after[1] > before[1]:
            return (after[0] - before[0]) / (after[1] - before[1]) * len(cpus)
    if hasattr(os, "getloadavg"):
        return min(float(len(cpus)), os.getloadavg()[0])
    return None


def threads_for(allowed: int, busy: float | None) -> int:
    """Return the thread count for ``allowed`` cores of which ``busy`` are taken: the free ones, at least 1."""
    if busy is None:
        return max(1, allowed)
    return max(1, min(allowed, round(allowed - busy)))


def default_threads() -> tuple[int, str]:
    """Return the default thread count and a note for the user when it is below the allowed cores."""
    cpus = allowed_cpus()
    busy = busy_cpus(cpus)
    threads = threads_for(len(cpus), busy)
    if threads >= len(cpus) or busy is None:
        return threads, ""
    return threads, (
        f"{len(cpus)} cores, {busy:.1f} busy with other processes; --threads {len(cpus)} uses all of them"
    )


__all__ = ["allowed_cpus", "busy_cpus", "default_threads", "threads_for"]
