"""Encoder-decoder generation: Cove's generate against transformers.generate on T5 and BART.

Random weights in the shapes of t5-small (6 + 6 layers, d_model 512, 8 heads, vocabulary
32128) and of a small BART (6 + 6 layers, d_model 512, 8 heads, vocabulary 50265), saved once by
transformers and loaded by each library, float32. A 64-token input, NEW new tokens (forced:
min_new_tokens = max_new_tokens), greedy and beam search with 4 beams, batch 1 and 8; the two
libraries alternate A B A B. tokens/s = batch x NEW / the whole generate call (the encoder
included). Goal: >= 1.3x transformers (the encoder runs once; each layer's cross-attention
keys and values are computed once per prompt, not per beam, and a prompt's beams attend to them
together; the LM head's weight is read in the order that streams fastest for a few rows, and
in decoding steps of 8 rows or more the LM head and the decoder layers' linears go through
oneDNN's GEMM; a beam reorder moves all layers' cache rows at once).
COVE_BENCH_THREADS=1 gives steadier ratios on a loaded machine (two OpenMP threads stall when
other processes hold the cores).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops  # noqa: E402

REPEATS = max(5, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
PROMPT = 64
NEW = int(os.environ.get("COVE_BENCH_NEW_TOKENS", "32"))
GOAL = ">= 1.3"


def _configs() -> dict:
    from transformers import BartConfig, T5Config

    return {
        "t5-small": T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                             num_heads=8, decoder_start_token_id=0, pad_token_id=0,
                             eos_token_id=1),
        "bart-small": BartConfig(vocab_size=50265, d_model=512, encoder_layers=6,
                                 decoder_layers=6, encoder_attention_heads=8,
                                 decoder_attention_heads=8, encoder_ffn_dim=2048,
                                 decoder_ffn_dim=2048),
    }


def _save(name: str, config, folder: Path) -> None:
    import torch
    from transformers import BartForConditionalGeneration, T5ForConditionalGeneration

    torch.manual_seed(0)
    cls = T5ForConditionalGeneration if name.startswith("t5") else BartForConditionalGeneration
    cls(config).save_pretrained(folder)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def runs(models: dict, ids, mask, beams: int) -> dict[str, list[float]]:
    """Per library: seconds per generate call, alternating, after a warm-up call each."""
    import torch

    def gen(m) -> float:
        return _timed(lambda: m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                                         min_new_tokens=NEW, num_beams=beams, do_sample=False))

    out: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            gen(m)
        for _ in range(REPEATS):
            for name, m in models.items():
                out[name].append(gen(m))
            print("  " + "   ".join(f"{k}: {v[-1]:.3f} s" for k, v in out.items()), flush=True)
    return out


def check_same_output(models: dict, ids, mask) -> bool:
    """Both libraries generate the same ids (greedy and beam) on these weights."""
    import torch

    with torch.inference_mode():
        for beams in (1, 4):
            a, b = (m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8,
                               num_beams=beams, do_sample=False) for m in models.values())
            if not torch.equal(a, b):
                return False
    return True


def main() -> list[Row]:
    import torch
    from transformers import AutoModelForSeq2SeqLM as TheirModel

    from cove.models import AutoModelForSeq2SeqLM

    print(f"seq2seq: {environment('torch', 'transformers')}")
    print(f"seq2seq: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    rows: list[Row] = []
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in _configs().items():
            folder = Path(tmp) / name
            _save(name, config, folder)
            models = {"cove": AutoModelForSeq2SeqLM.from_pretrained(folder),
                      "transformers": TheirModel.from_pretrained(folder).eval()}
            params = sum(p.numel() for p in models["cove"].parameters()) / 1e6
            for batch in (1, 8):
                ids = torch.randint(5, config.vocab_size, (batch, PROMPT), generator=g)
                mask = torch.ones_like(ids)
                same = check_same_output(models, ids, mask)
                for beams in (1, 4):
                    kind = "greedy" if beams == 1 else f"beam {beams}"
                    print(f"seq2seq: {name} ({params:.0f}M), {kind}, batch {batch}: "
                          f"{NEW} new tokens x{REPEATS}, alternating ...", flush=True)
                    times = runs(models, ids, mask, beams)
                    speed = {k: Stats.of([batch * NEW / t for t in v]) for k, v in times.items()}
                    rows.append(Row("seq2seq", f"{name}, {kind}, batch {batch}", "tokens/s",
                                    speed["cove"], speed["transformers"],
                                    "transformers.generate", GOAL,
                                    f"{PROMPT}-token input, {NEW} new tokens; same ids as "
                                    f"transformers: {'yes' if same else 'NO'}"))
            del models
    print(f"seq2seq: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    finish(main())
