"""cove.pipeline against transformers.pipeline on the real all-MiniLM-L6-v2.

1. Throughput (inputs/s) at batch sizes 1 and 32 on 2,000 varied sentences, for
   feature-extraction, text-classification, NER and zero-shot classification (MiniLM's encoder
   with randomly initialised 2-, 9- and 3-label (NLI) heads, saved once and loaded by both;
   zero-shot runs 3 candidate labels, so 3 pairs per input). Each of the REPEATS rounds runs
   both pipelines, alternating, on its own fifth of the sentences (rows i::5), so the 2,000
   are all used and every round is a like-for-like pair. Goal: >= 1.3x transformers at batch 32.
2. Cold start: a new process to the first feature-extraction result. Goal: <= 0.5x.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops  # noqa: E402

from models import minilm  # noqa: E402

REPEATS = 5
SENTENCES = 2000

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

TASKS = {"feature-extraction": {}, "text-classification": {},
         "ner": {"aggregation_strategy": "simple"},
         "zero-shot-classification": {"candidate_labels": ["travel", "cooking", "dancing"]}}
NLI_LABELS = ["contradiction", "neutral", "entailment"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def sentences(n: int = SENTENCES, seed: int = 0) -> list[str]:
    """Varied English-like sentences: mostly short, some long, names, numbers, punctuation."""
    rng = random.Random(seed)
    words = ("the a of to and in is it that for was on with as his they at be this from have "
             "or by one had not but what all were when we there can an your which their said "
             "model data train search user query review movie great terrible price delivery "
             "support quickly slowly never always really very quite rather").split()
    names = ("Paris London Berlin Alice Bob Marie Curie Google Microsoft Hugging Face Amazon "
             "Tokyo Nairobi Lima Quebec Oslo Ada Lovelace Turing").split()
    out = []
    for _ in range(n):
        length = min(int(rng.expovariate(1 / 14)) + 3, 90)
        toks = [rng.choice(names) if rng.random() < 0.12 else
                str(rng.randint(1, 2026)) if rng.random() < 0.03 else rng.choice(words)
                for _ in range(length)]
        toks[0] = toks[0].capitalize()
        text = " ".join(toks)
        out.append(text + rng.choice([".", "!", "?", "...", ""]))
    return out


def throughput(task: str, folder: Path, texts: list[str], batch: int) -> Row:
    import torch
    from transformers import pipeline as their_pipeline

    from cove import pipeline

    kwargs = TASKS[task]
    pipes = {"cove": pipeline(task, model=str(folder), batch_size=batch),
             "transformers": their_pipeline(task, model=str(folder), batch_size=batch)}
    rates: dict[str, list[float]] = {k: [] for k in pipes}
    with torch.inference_mode():
        for p in pipes.values():
            p(texts[:max(batch, 8)], **kwargs)  # warm-up
        for r in range(REPEATS):
            part = texts[r::REPEATS]
            for name, p in pipes.items():
                t = time.perf_counter()
                p(part, **kwargs)
                rates[name].append(len(part) / (time.perf_counter() - t))
            print("  " + "   ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))
    return Row("pipelines", f"{task}, batch {batch}, MiniLM", "inputs/s",
               Stats.of(rates["cove"]), Stats.of(rates["transformers"]),
               "transformers.pipeline", ">= 1.3" if batch > 1 else "",
               f"{len(texts)} sentences, {REPEATS} rounds of {len(texts) // REPEATS}")


def main() -> list[Row]:
    print(f"pipelines: {environment('torch', 'transformers', 'tokenizers')}")
    print(f"pipelines: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    folder = minilm()
    texts = sentences()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-pipelines-"))
    try:
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        folders = {"feature-extraction": folder}
        for task, cls, extra in (
                ("text-classification", AutoModelForSequenceClassification, {"num_labels": 2}),
                ("ner", AutoModelForTokenClassification,
                 {"id2label": dict(enumerate(NER_LABELS)),
                  "label2id": {v: i for i, v in enumerate(NER_LABELS)}}),
                ("zero-shot-classification", AutoModelForSequenceClassification,
                 {"id2label": dict(enumerate(NLI_LABELS)),
                  "label2id": {v: i for i, v in enumerate(NLI_LABELS)}})):
            folders[task] = tmp / task
            shutil.copytree(folder, folders[task])
            # same encoder weights, a random head
            cls.from_pretrained(folder, **extra).save_pretrained(folders[task])
        for batch in (32, 1):
            for task, path in folders.items():
                print(f"pipelines: {task}, batch {batch}, {len(texts)} sentences, alternating ...")
                rows.append(throughput(task, path, texts, batch))
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
