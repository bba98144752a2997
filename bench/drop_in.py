"""The drop-in names and casts: Cove against transformers / datasets.

1. Import cost in a new process (the interpreter's own start-up subtracted): `import cove` vs
   `import transformers`, and one name (`from cove import AutoTokenizer` /
   `AutoModelForSequenceClassification`) vs the same from transformers. Goal <= 0.5.
2. `cast_column("label", ClassLabel(names=...))` on 1,000,000 string labels (a dataset saved to
   disk, loaded by each library): Cove's vectorised cast vs datasets'. Goal <= 1.0.

Cove and the reference alternate, REPEATS rounds, medians compared.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops  # noqa: E402

REPEATS = 5
ROWS = 1_000_000
LABELS = ["negative", "neutral", "positive"]

IMPORT = r"""
import sys, time
t = time.perf_counter()
exec(sys.argv[1])
print(time.perf_counter() - t)
"""
IMPORTS = {  # what -> (Cove's statement, the reference's)
    "import the package": ("import cove", "import transformers"),
    "import AutoTokenizer": ("from cove import AutoTokenizer",
                             "from transformers import AutoTokenizer"),
    "import AutoModelForSequenceClassification": (
        "from cove import AutoModelForSequenceClassification",
        "from transformers import AutoModelForSequenceClassification"),
}


def import_seconds(statement: str) -> float:
    out = subprocess.run([sys.executable, "-c", IMPORT, statement], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def cast_seconds(library: str, folder: str) -> float:
    """One cast of the saved dataset, in a fresh process (no cache reuse between rounds)."""
    code = (f"import sys, time\nfrom {library} import ClassLabel, load_from_disk\n"
            "ds = load_from_disk(sys.argv[1])\nt = time.perf_counter()\n"
            f"ds = ds.cast_column('label', ClassLabel(names={LABELS!r}))\n"
            "print(time.perf_counter() - t)\n")
    cache = tempfile.mkdtemp(prefix="cove-bench-cast-")
    try:
        shutil.copytree(folder, cache, dirs_exist_ok=True)  # casts write next to their input
        env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
        out = subprocess.run([sys.executable, "-c", code, cache], check=True,
                             capture_output=True, text=True, env=env)
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> list[Row]:
    print(f"drop_in: {environment('torch', 'transformers', 'datasets', 'pyarrow')}")
    print(f"drop_in: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    rows = []
    for what, (ours, theirs) in IMPORTS.items():
        samples: dict[str, list[float]] = {"cove": [], "transformers": []}
        print(f"drop_in: {what}, fresh processes x{REPEATS}, alternating ...")
        for _ in range(REPEATS):
            samples["cove"].append(import_seconds(ours))
            samples["transformers"].append(import_seconds(theirs))
        rows.append(Row("drop_in", what, "s", Stats.of(samples["cove"]),
                        Stats.of(samples["transformers"]), "transformers", "<= 0.5",
                        "new process; interpreter start-up not counted"))

    from datasets import Dataset

    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-drop-in-"))
    try:
        rng = random.Random(0)
        Dataset.from_dict({"label": [rng.choice(LABELS) for _ in range(ROWS)],
                           "n": list(range(ROWS))}).save_to_disk(str(tmp / "data"))
        samples = {"cove.datasets": [], "datasets": []}
        print(f"drop_in: ClassLabel cast of {ROWS:,} string labels x{REPEATS}, alternating ...")
        for _ in range(REPEATS):
            for library in samples:
                samples[library].append(cast_seconds(library, str(tmp / "data")))
        rows.append(Row("drop_in", "cast_column strings -> ClassLabel (1M rows)", "s",
                        Stats.of(samples["cove.datasets"]), Stats.of(samples["datasets"]),
                        "datasets", "<= 1.0", "fresh process per cast, cast time only"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"drop_in: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    finish(main())
    print(f"drop_in: {time.perf_counter() - t0:.0f} s")
