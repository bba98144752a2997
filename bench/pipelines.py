"""cove.pipeline against transformers.pipeline on the real all-MiniLM-L6-v2.

1. Batch-32 throughput (sentences/s), both pipelines in this process, alternating, on
   feature-extraction and on text-classification (MiniLM's encoder with a randomly initialised
   2-label head, saved once and loaded by both). Goal: >= 1.3x transformers.
2. Cold start: a new process to the first feature-extraction result. Goal: <= 0.5x.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops  # noqa: E402

from models import corpus, minilm  # noqa: E402

REPEATS = 5
BATCH = 32

COLD = r"""
import sys, time
t = time.perf_counter()
which, folder = sys.argv[1:3]
if which == "cove":
    from cove import pipeline
else:
    from transformers import pipeline
pipeline("feature-extraction", model=folder)("A first sentence to embed.")
print(time.perf_counter() - t)
"""


def throughput(task: str, folder: Path, sentences: list[str]) -> Row:
    import torch
    from transformers import pipeline as their_pipeline

    from cove import pipeline

    pipes = {"cove": pipeline(task, model=str(folder), batch_size=BATCH),
             "transformers": their_pipeline(task, model=str(folder), batch_size=BATCH)}
    times: dict[str, list[float]] = {k: [] for k in pipes}
    with torch.inference_mode():
        for p in pipes.values():
            p(sentences[:BATCH])  # warm-up
        for _ in range(REPEATS):
            for name, p in pipes.items():
                t = time.perf_counter()
                p(sentences)
                times[name].append(time.perf_counter() - t)
            print("  " + "   ".join(f"{k} {len(sentences) / v[-1]:.0f}/s"
                                    for k, v in times.items()))
    rate = {k: Stats.of([len(sentences) / t for t in v]) for k, v in times.items()}
    return Row("pipelines", f"{task}, batch {BATCH}, MiniLM", "sentences/s", rate["cove"],
               rate["transformers"], "transformers.pipeline", ">= 1.3")


def main() -> list[Row]:
    print(f"pipelines: {environment('torch', 'transformers', 'tokenizers')}")
    print(f"pipelines: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    folder = minilm()
    sentences = corpus(256)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-pipelines-"))
    try:
        from transformers import AutoModelForSequenceClassification

        clf = tmp / "minilm-clf"
        shutil.copytree(folder, clf)
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
        model.save_pretrained(clf)  # same encoder weights, a random 2-label head
        for task, path in (("feature-extraction", folder), ("text-classification", clf)):
            print(f"pipelines: {task} x{REPEATS}, {len(sentences)} sentences, alternating ...")
            rows.append(throughput(task, path, sentences))
        cold: dict[str, list[float]] = {"cove": [], "transformers": []}
        print(f"pipelines: cold start x{REPEATS}, fresh processes, alternating ...")
        for _ in range(REPEATS):
            for which in cold:
                out = subprocess.run([sys.executable, "-c", COLD, which, str(folder)],
                                     check=True, capture_output=True, text=True)
                cold[which].append(float(out.stdout.strip().splitlines()[-1]))
            print("  " + "   ".join(f"{k} {v[-1]:.2f} s" for k, v in cold.items()))
        rows.append(Row("pipelines", "cold start to the first embedding", "s",
                        Stats.of(cold["cove"]), Stats.of(cold["transformers"]),
                        "transformers.pipeline", "<= 0.5", "new process, imports included"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"pipelines: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    finish(main())
