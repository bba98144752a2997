"""What every benchmark shares: the matmul probe, environment line, statistics and the table.

The rules (../shared/benchmarking.md): Cove and the reference alternate in the same run, each
at least 5 times; report min / median / max and the ratio of medians; print a 2048x2048 fp32
matmul probe before and after, the thread count and library versions.

Threads: the cores this process may run on (2 on the bench machines), or COVE_BENCH_THREADS;
set here, before any benchmark imports torch, numpy or pyarrow, and inherited by the processes
a benchmark starts. Every script imports this module first.

A benchmark script exposes `main() -> list[Row]` and ends with `finish(main())`, which prints
its table and one machine-readable line (ROWS_MARKER + JSON) that bench/run_all.py collects.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

# bench/datasets.py is named like the library it measures: keep this folder at the END of the
# import path, so `import datasets` (ours, or transformers' own probe for it) finds the library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

ROWS_MARKER = "BENCH_ROWS_JSON: "

_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
THREADS = int(os.environ.get("COVE_BENCH_THREADS") or _CORES or 1)
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)


def probe_gflops(n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n x n fp32 matmul (best of `reps`): shows the machine's slow phases."""
    try:
        import torch
    except ImportError:  # the probe is torch's; without it fall back to numpy when present
        import numpy as np

        a = np.random.rand(n, n).astype(np.float32)
        mm = lambda: a @ a  # noqa: E731
    else:
        a = torch.rand(n, n, dtype=torch.float32)
        mm = lambda: a @ a  # noqa: E731
    mm()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        mm()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def versions(*packages: str) -> str:
    out = []
    for p in packages:
        try:
            out.append(f"{p} {metadata.version(p)}")
        except metadata.PackageNotFoundError:
            out.append(f"{p} -")
    return ", ".join(out)


def threads() -> int:
    """The compute threads in use: torch's count where torch is loaded (it should be THREADS;
    a difference shows a library that ignored the setting)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else THREADS


def cpu_model() -> str:
    """The CPU's model name (lscpu): figures compare only within one machine."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Model name")), "unknown CPU")


def environment(*packages: str) -> str:
    return (f"{cpu_model()}, python {platform.python_version()}, {threads()} threads, "
            f"{versions(*packages)}")


@dataclass
class Stats:
    min: float
    median: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        return cls(min(samples), statistics.median(samples), max(samples), len(samples))

    @classmethod
    def fixed(cls, value: float) -> Stats:
        """A target rather than a measurement (n=0)."""
        return cls(value, value, value, 0)

    def show(self, fmt: str = ".3g") -> str:
        if not self.n:
            return f"{self.median:{fmt}}"
        return f"{self.median:{fmt}} [{self.min:{fmt}}..{self.max:{fmt}}] n={self.n}"


@dataclass
class Row:
    """One line of the ratio table: ours against theirs (a reference run or a fixed target)."""

    bench: str
    name: str
    unit: str
    ours: Stats
    theirs: Stats | None  # None: the reference could not run here
    theirs_label: str
    goal: str = ""  # e.g. ">= 0.70" on the ratio of medians
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.theirs is None or not self.theirs.median:
            return None
        return self.ours.median / self.theirs.median

    @property
    def met(self) -> bool | None:
        if self.ratio is None or not self.goal:
            return None
        op, value = self.goal.split()
        return self.ratio >= float(value) if op == ">=" else self.ratio <= float(value)

    def to_json(self) -> dict:
        d = asdict(self)
        d["ratio"], d["met"] = self.ratio, self.met
        return d

    @classmethod
    def from_json(cls, d: dict) -> Row:
        d = {k: v for k, v in d.items() if k not in ("ratio", "met")}
        d["ours"] = Stats(**d["ours"])
        d["theirs"] = Stats(**d["theirs"]) if d["theirs"] else None
        return cls(**d)


def table(rows: list[Row]) -> str:
    """The ratio table: medians with [min..max], ratio of medians ours/theirs, goal."""
    head = ("bench", "what", "unit", "ours: median [min..max]", "theirs", "median [min..max]",
            "ours/theirs", "goal", "met")
    lines = [head]
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        lines.append((
            r.bench, r.name, r.unit, r.ours.show(), r.theirs_label,
            r.theirs.show() if r.theirs else "skipped", f"{r.ratio:.2f}" if r.ratio else "-",
            r.goal or "-", met,
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r.name}: {r.note}" for r in rows if r.note]
    return "\n".join(out + (["notes:", *notes] if notes else []))


def finish(rows: list[Row]) -> None:
    """End of a benchmark script: the table for people, one JSON line for run_all."""
    print()
    print(table(rows))
    print(ROWS_MARKER + json.dumps([r.to_json() for r in rows]), flush=True)
    sys.stdout.flush()
