"""cove.datasets against Hugging Face `datasets` and plain pyarrow (the floor), 1,000,000 rows.

One CSV (id, text of varied length, label, score) is written once; then, alternating
cove / datasets / pyarrow in each of REPEATS rounds, with a fresh cache folder per round:
1. load the CSV into a memory-mapped Arrow dataset (pyarrow: `pyarrow.csv.read_csv`);
2. batched map adding a column (the length of `text`);
3. filter (label == 1, batched);
4. shuffle (seed 0) and iterate every row in batches of 1,000;
5. streaming iteration over every row of the CSV (`streaming=True`; pyarrow: `open_csv`
   batches turned into Python rows);
and the bytes the map added to the cache, against the loaded data's Arrow bytes.
Goals: load <= 0.7x datasets and <= 1.5x pyarrow; map and filter >= 1.5x faster than datasets
(ratio of times <= 0.67); cache bytes <= 1.0x the data; streaming >= 1.0x (times <= 1.0).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops  # noqa: E402

ROWS = 1_000_000
REPEATS = 5
LIBS = ("cove", "datasets", "pyarrow")


def write_csv(path: Path, rows: int = ROWS, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = ("alpha beta gamma delta epsilon data model train eval token review great bad "
             "movie price quick brown fox lazy dog").split()
    with open(path, "w", encoding="utf-8") as f:
        f.write("id,text,label,score\n")
        for i in range(rows):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 16)))
            f.write(f'{i},"{text}",{rng.randint(0, 4)},{rng.random():.6f}\n')


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def lengths(batch: dict) -> dict:
    return {"n": [len(t) for t in batch["text"]]}


def is_one(batch: dict) -> list[bool]:
    return [label == 1 for label in batch["label"]]


class Side:
    """One library's way of doing each step, on its own cache folder."""

    def __init__(self, lib: str, csv: Path, cache: Path) -> None:
        self.lib, self.csv, self.cache = lib, csv, cache
        self.ds = None

    def load(self) -> None:
        if self.lib == "pyarrow":
            import pyarrow.csv

            self.ds = pyarrow.csv.read_csv(self.csv)
            return
        load_dataset = _load_dataset(self.lib)
        self.ds = load_dataset("csv", data_files=str(self.csv), split="train",
                               cache_dir=str(self.cache))

    def map(self) -> None:
        if self.lib == "pyarrow":
            import pyarrow.compute as pc

            self.mapped = self.ds.append_column("n", pc.utf8_length(self.ds["text"]))
            return
        self.mapped = self.ds.map(lengths, batched=True, load_from_cache_file=False)

    def filter(self) -> None:
        if self.lib == "pyarrow":
            import pyarrow.compute as pc

            self.filtered = self.ds.filter(pc.equal(self.ds["label"], 1))
            return
        self.filtered = self.ds.filter(is_one, batched=True, load_from_cache_file=False)

    def shuffle_iterate(self) -> int:
        n = 0
        if self.lib == "pyarrow":
            import numpy as np

            order = np.random.default_rng(0).permutation(self.ds.num_rows)
            for start in range(0, len(order), 1000):
                n += len(self.ds.take(order[start:start + 1000]).to_pylist())
            return n
        for batch in self.ds.shuffle(seed=0).iter(batch_size=1000):
            n += len(batch["id"])
        return n

    def stream(self) -> int:
        n = 0
        if self.lib == "pyarrow":
            import pyarrow.csv

            for batch in pyarrow.csv.open_csv(self.csv):
                n += len(batch.to_pylist())
            return n
        load_dataset = _load_dataset(self.lib)
        for _ in load_dataset("csv", data_files=str(self.csv), split="train", streaming=True):
            n += 1
        return n


def _load_dataset(lib: str) -> Callable:
    if lib == "cove":
        from cove.datasets import load_dataset
    else:
        from datasets import load_dataset
    return load_dataset


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> list[Row]:
    import datasets

    datasets.disable_progress_bars()
    print(f"datasets: {environment('pyarrow', 'datasets')}")
    print(f"datasets: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-datasets-"))
    steps = ("load", "map", "filter", "shuffle_iterate", "stream")
    times = {s: {lib: [] for lib in LIBS} for s in steps}
    cache = {"cove": [], "datasets": []}
    try:
        csv = tmp / "data.csv"
        write_csv(csv)
        print(f"datasets: {ROWS:,} rows, CSV {csv.stat().st_size / 2**20:.0f} MiB; "
              f"{REPEATS} rounds, alternating ...")
        for r in range(REPEATS):
            for lib in LIBS:
                side = Side(lib, csv, tmp / f"cache-{lib}-{r}")
                for step in steps:
                    if step == "map" and lib != "pyarrow":
                        before = folder_bytes(side.cache)
                        times[step][lib].append(timed(side.map))
                        cache[lib].append((folder_bytes(side.cache) - before, before))
                    else:
                        times[step][lib].append(timed(getattr(side, step)))
                del side
                shutil.rmtree(tmp / f"cache-{lib}-{r}", ignore_errors=True)
            print("  " + "   ".join(
                f"{s} " + "/".join(f"{times[s][lib][-1]:.2f}" for lib in LIBS) for s in steps)
                + "  (s, cove/datasets/pyarrow)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    goals = {"load": "<= 0.7", "map": "<= 0.67", "filter": "<= 0.67",
             "shuffle_iterate": "", "stream": "<= 1.0"}
    names = {"load": "load CSV", "map": "map (batched, adds a column)",
             "filter": "filter (batched)", "shuffle_iterate": "shuffle + iterate (batches of 1000)",
             "stream": "streaming iteration (rows)"}
    rows = []
    for step in steps:
        ours = Stats.of(times[step]["cove"])
        rows.append(Row("datasets", f"{names[step]}, 1M rows", "s", ours,
                        Stats.of(times[step]["datasets"]), "datasets", goals[step]))
        rows.append(Row("datasets", f"{names[step]}, 1M rows", "s", ours,
                        Stats.of(times[step]["pyarrow"]), "pyarrow (floor)",
                        "<= 1.5" if step == "load" else ""))
    for lib in ("cove", "datasets"):
        added = Stats.of([a for a, _ in cache[lib]])
        data = Stats.of([d for _, d in cache[lib]])
        rows.append(Row("datasets", f"cache bytes added by map / data bytes ({lib})", "bytes",
                        added, data, "cache before the map", "<= 1.0" if lib == "cove" else "",
                        "the data: the Arrow file load_dataset wrote"))
    print(f"datasets: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    finish(main())
