"""How many threads a generation runs with: the cores free when it starts, never more than
torch's thread count.

A decoding step is many short parallel regions (cove.kernels' one-call step enters one per
product, ~200 per token), each as slow as its slowest thread. When another process holds a
core, the thread that shares it arrives up to a scheduler timeslice late at every region,
while the others spin at OpenMP's barrier. Measured on 2 cores (SmolLM2-135M float32, 48
tokens, alternating in one process, load ~11 from other work): 2 threads decoded 2.5
tokens/s and burnt 9.6 CPU-seconds, 1 thread 11.4 tokens/s on 2.1; with one more busy
process, 0.9 against 5.5. So at the start of a generation (once, not per token) the
processes running elsewhere are counted, and the generation runs with the cores they leave,
at least one and at most torch.get_num_threads(); the count is restored after. Measured
again with this policy against torch's 2 threads, alternating (load ~8): 12.3 against 1.6
tokens/s, and 6.1 against 0.8 with one more busy process. A quiet machine (where it keeps
torch's count) could not be measured here: other work kept the load at 6-11.

The count of running tasks is the kernel's (/proc/loadavg's fourth field), sampled a few
times over ~10 milliseconds, less this process's own running threads (an OpenMP worker
still spinning after the last region is ours, not load), and the fewest of those readings
counts: a process that holds a core is running at every reading, while one that runs for a
moment (another program's threads spinning down after their work, a daemon waking) is not.
Their mean let such moments through: in bench/generate.py, alternating with llama.cpp, 2 of
5 of Cove's runs went to one thread on a quiet machine (53 against 84 tokens/s). torch.set_num_threads also sets the
count a thread starts with when it first runs a parallel op, so a thread that starts torch
work while another thread's generation has lowered the count keeps that lower count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SAMPLES = 5  # readings of the running count, INTERVAL apart
INTERVAL = 0.0025  # seconds: the sampling costs a generation about 10 ms


def running_tasks(loadavg: str) -> int:
    """The kernel's count of running (and runnable) tasks, from /proc/loadavg's text
    ("0.52 0.58 0.59 3/126 4567": 3)."""
    return int(loadavg.split()[3].split("/")[0])


def running_threads(stats: list[str]) -> int:
    """How many of these /proc/<pid>/task/<tid>/stat texts say the thread is running (state
    R, the field after the parenthesised name, which may itself hold spaces)."""
    return sum(1 for s in stats if s[s.rindex(")") + 2:].startswith("R"))


def threads_for(limit: int, cpus: int, others: float) -> int:
    """Threads for a generation: the `cpus` this process may run on less the tasks running
    elsewhere (`others`, rounded half up), at least 1, at most `limit`."""
    return max(1, min(limit, int(cpus - others + 0.5)))


def _cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _own_stats() -> list[str]:
    stats = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stats.append(f.read())
        except OSError:  # the thread ended meanwhile
            pass
    return stats


def others_running() -> float | None:
    """The fewest tasks running outside this process at any of SAMPLES readings (None: the
    system does not say, e.g. no /proc)."""
    counts = []
    try:
        for i in range(SAMPLES):
            if i:
                time.sleep(INTERVAL)
            with open("/proc/loadavg") as f:
                total = running_tasks(f.read())
            counts.append(max(0, total - running_threads(_own_stats())))
    except (OSError, ValueError, IndexError):
        return None
    return float(min(counts))


@contextmanager
def generation_threads(device: torch.device) -> Iterator[int]:
    """Run the block (a generation on `device`) with the threads free cores allow; yields
    that count. Off the CPU, or at one thread, nothing is measured or changed."""
    limit = torch.get_num_threads()
    if device.type != "cpu" or limit == 1:
        yield limit
        return
    others = others_running()
    threads = limit if others is None else threads_for(limit, _cpus(), others)
    if threads == limit:
        yield limit
        return
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(limit)
