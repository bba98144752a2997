"""Memory of SmolLM2-135M-Instruct kept small (issue 20: peak <= 1.3x the GGUF file plus the
KV cache): the Q4_1 GGUF kept quantised, and Cove's own int4 quantised as it loads from the
float32 safetensors that GGUF converts to.

Each measurement is a fresh child process: it loads the model, generates, and prints its
peak RSS (VmHWM) after the load and at the end, and the modules it imported; a second child
imports those same modules and loads cove.kernels, no model: its peak is the library's,
subtracted. Each peak is taken less the process's file-backed pages when it is read
(RssFile: the mapped libraries' code): how many of libtorch's code pages a run maps depends
on the page cache, not on the model (a freshly installed torch, all of it cached, mapped ~47
MiB more than a long-installed one and failed the bound on a fresh clone). The float32
checkpoint's pages are file-backed too, but they are read while loading and counted in the
load's peak (the mapping is gone at the end). File pages mapped after the peak are
subtracted too, so this can understate the peak by those. The prompt is 8 tokens, so every
step (the prompt's too) runs in cove.kernels; a longer prompt's float32 weight slices and
GEMM buffers are measured by bench/generate.py's memory rows, not bounded here. Bounds, not
timings. Measured (3 runs each, load ~8): the GGUF's load 1.03-1.04x the file, the whole run
1.01-1.02x; the int4's load 1.00-1.04x, the whole run 1.02-1.15x (it was 3.2x while the tied
embedding stayed float32 beside its int8 head and the head was quantised whole).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cove import kernels
from tests.models.test_gguf import SMOLLM2, SMOLLM2_NAME, need_data, smollm2_float32

PROMPT, NEW = 8, 56

CHILD = r"""
import importlib, json, sys
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
import torch
from cove import kernels
from cove.models import AutoModelForCausalLM
kernels.load()
torch.set_num_threads(1)
spec = json.loads(sys.argv[1])
if spec["kind"] == "baseline":
    for name in spec["modules"]:
        try:
            importlib.import_module(name)
        except Exception:  # a module that imports only as part of another's import
            pass
    print(json.dumps({"peak": status("VmHWM:") - status("RssFile:")}))
    sys.exit()
if spec["kind"] == "gguf":
    model = AutoModelForCausalLM.from_pretrained(spec["folder"], gguf_file=spec["file"],
                                                 dtype="auto")
else:
    from cove.models.weight_only import Int4WeightOnlyConfig, TorchAoConfig
    model = AutoModelForCausalLM.from_pretrained(
        spec["folder"], quantization_config=TorchAoConfig(Int4WeightOnlyConfig(group_size=32)))
load_peak = status("VmHWM:") - status("RssFile:")
tensors = {t.data_ptr(): t.numel() * t.element_size()
           for t in [*model.parameters(), *model.buffers()]}
ids = torch.arange(100, 100 + spec["prompt"])[None]
with torch.inference_mode():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=spec["new"], min_new_tokens=spec["new"], pad_token_id=0)
c = model.config
head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
kv = c.num_hidden_layers * 2 * c.num_key_value_heads * head * out.shape[1] * model.dtype.itemsize
print(json.dumps({"load_peak": load_peak, "peak": status("VmHWM:") - status("RssFile:"),
                  "kv": kv,
                  "tensors": sum(tensors.values()),
                  "modules": sorted(n for n in sys.modules if n != "__main__")}))
"""


def child(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["gguf", "int4"])
def test_peak_memory_within_the_gguf_file(kind):
    """`gguf`: the GGUF kept quantised (dtype="auto"). `int4`: Cove's own int4 (group 32)
    quantised as it loads from the float32 safetensors the GGUF converts to (5.5x the file):
    the same bounds, against the same GGUF file."""
    from cove.models.gguf import load_gguf

    need_data()
    if kernels.load() is None:
        pytest.skip("cove.kernels are off or not built: the int4 layers take torch's layout")
    # The configuration and tokenizer (and for int4 the float32 folder) are made first, not
    # measured here.
    if kind == "gguf":
        load_gguf(SMOLLM2.parent, SMOLLM2_NAME, weights=False)
        folder = SMOLLM2.parent
    else:
        folder = smollm2_float32()
    run = child({"kind": kind, "folder": str(folder), "file": SMOLLM2_NAME,
                 "prompt": PROMPT, "new": NEW})
    baseline = child({"kind": "baseline", "modules": run["modules"]})["peak"]
    size = SMOLLM2.stat().st_size
    # The model's own tensors are no larger than the file's blocks (int4 groups as Q4_1's,
    # int8 rows for the embedding, the tied head sharing them).
    assert run["tensors"] <= size
    mib = 2**20
    load = (run["load_peak"] - baseline) / mib
    assert load <= 1.3 * size / mib, f"the load's peak: {load:.1f} MiB for {size / mib:.1f}"
    whole = (run["peak"] - baseline) / mib
    bound = (1.3 * size + run["kv"]) / mib
    assert whole <= bound, f"peak {whole:.1f} MiB, bound {bound:.1f} MiB (1.3x file + KV cache)"
