"""`cove chat` decodes through generate's one-call kernel steps (cove.models.decoding's
FastDecoder) and replies what the module forward replies.

`cove chat` runs in a subprocess on the real SmolLM2-135M-Instruct GGUF (float32, and kept
quantised with --dtype auto), through a driver that counts FastDecoder.step calls or, for the
reference reply, hides the model class's `fast_decoder` so generate keeps the module forward.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cove import kernels
from tests.models.test_gguf import SMOLLM2, need_data

REPO = Path(__file__).resolve().parents[2]
DRIVER = r"""
import sys
from cove.cli import main
from cove.models import decoding
from cove.models.llama import LlamaForCausalLM

mode, argv = sys.argv[1], sys.argv[2:]
calls = []
if mode == "module":
    LlamaForCausalLM.fast_decoder = lambda self, positions, forward_kwargs: None
else:
    step = decoding.FastDecoder.step

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return step(self, *args, **kwargs)

    decoding.FastDecoder.step = counted
code = main(argv)
print(f"fast steps: {len(calls)}", file=sys.stderr)
sys.exit(code)
"""


def chat(mode: str, dtype: str) -> tuple[str, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, mode, "chat", str(SMOLLM2), "--dtype", dtype,
         "--max-new-tokens", "16"],
        input="What is the capital of France?\n", capture_output=True, text=True, env=env,
        timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    steps = int(result.stderr.rsplit("fast steps: ", 1)[1].split()[0])
    return result.stdout, steps


@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_chat_takes_the_kernel_steps(dtype):
    need_data()
    if kernels.load() is None:
        pytest.skip("cove.kernels are off or not built: generate has no kernel steps")
    fast, steps = chat("fast", dtype)
    module, none = chat("module", dtype)
    assert steps >= 4 and none == 0
    assert fast == module
    assert "Paris" in fast
