"""Cove's CPU kernels for decoding: a small C++ extension (shipped as source) built at first
use for the machine it runs on.

    from cove import kernels
    ext = kernels.load()          # the extension, or None (then callers use torch's ops)
    y = ext.dense(x, weight, bias)

What it holds and why: gemv.cpp (products of 1..8 rows with float32, bfloat16, int8 and int4
weights) and decode.cpp (a Llama-family decoder's whole one-token step, used by
cove.models.decoding); attention.cpp (training attention with dropout, forward and backward,
used by cove.models.dropout). The build uses torch.utils.cpp_extension with
`-O3 -march=native -fopenmp` (at::parallel_for then runs on torch's own OpenMP pool: the
extension's libgomp.so.1 is the one torch already loaded). The binary is cached under
`COVE_KERNELS_CACHE` (default `~/.cache/cove/kernels`) in a folder keyed by the source, the
torch and Python versions and the CPU's flags, so a binary built for one CPU is never loaded
on another; a file lock keeps two processes (pytest-xdist workers) from building at once, the
second then loads the first's binary. The first build takes about a minute on two cores.

`COVE_KERNELS=0` turns the kernels off. Without a compiler, or when the build fails, one
warning says why and every caller falls back to torch's kernels.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import platform
import sys
import time
import types
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger("cove.kernels")

# The extension's files: the .cpp ones are compiled, all of them key the cache.
FILES = tuple(Path(__file__).with_name(n) for n in (
    "gemv.h", "gemv.cpp", "decode.cpp", "attention.h", "attention.cpp", "prefill.cpp"))
# Activation rows the kernels take (decoding batch 1..8); more go to torch's GEMM.
MAX_ROWS = 8
_UNSET = object()
_loaded: object = _UNSET


def cache_root() -> Path:
    root = os.environ.get("COVE_KERNELS_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "cove" / "kernels"


def _cpu_flags() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines()
             if line.startswith(("flags", "model name", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(lines))


def build_key(flags: tuple[str, ...] = ()) -> str:
    """The cache folder's name: source, compile flags, torch (its version and where it lies),
    Python, machine and CPU. Where torch lies is in the key because the build file names its
    include folders: two environments sharing a folder would rewrite it and rebuild in turn."""
    parts = [*(f.read_bytes() for f in FILES), " ".join(flags).encode(), torch.__version__.encode(),
             os.path.dirname(torch.__file__).encode(), sys.version.encode(),
             platform.machine().encode(), _cpu_flags().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


def build(flags: tuple[str, ...] = ()) -> ModuleType:
    """Compile (or load the cached build of) the extension; raises when that fails.
    `flags`: extra compiler flags (the tests build the scalar path with -DCOVE_KERNELS_SCALAR)."""
    from torch.utils import cpp_extension

    key = build_key(flags)
    folder = cache_root() / key
    folder.mkdir(parents=True, exist_ok=True)
    with open(cache_root() / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # A copy of the sources inside the folder: ninja then rebuilds only when they change,
        # not when the package is reinstalled with new timestamps.
        for file in FILES:
            copy = folder / file.name
            if not copy.exists() or copy.read_bytes() != file.read_bytes():
                copy.write_bytes(file.read_bytes())
        built = any(folder.glob("*.so"))
        if not built:  # the first decoding step would otherwise pause silently
            log.warning("cove kernels: compiling them once for this machine into %s (about a "
                        "minute; COVE_KERNELS=0 skips them)", folder)
        start = time.perf_counter()
        module = cpp_extension.load(
            name=f"cove_kernels_{key}", build_directory=str(folder),
            sources=[str(folder / f.name) for f in FILES if f.suffix == ".cpp"],
            extra_cflags=["-O3", "-march=native", "-fopenmp", *flags],
            extra_ldflags=["-fopenmp"], verbose=False)
        if not built:
            log.info("cove kernels built in %.1f s (%s)", time.perf_counter() - start, folder)
    return module


def load() -> ModuleType | None:
    """The kernels for this process (built once per machine), or None: turned off by
    COVE_KERNELS=0, or they could not be built (one warning says why)."""
    global _loaded
    if _loaded is _UNSET:
        _loaded = None
        if os.environ.get("COVE_KERNELS", "1") == "0":
            pass
        elif platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
            log.warning("cove kernels: not built for %s; using torch's kernels",
                        platform.machine())
        else:
            try:
                _loaded = build()
            except Exception as e:  # noqa: BLE001 - any build failure falls back, said once
                reason = str(e).strip().splitlines()
                log.warning("cove kernels could not be built (%s); using torch's kernels "
                            "(slower decoding). COVE_KERNELS=0 silences this.",
                            reason[-1] if reason else type(e).__name__)
    return _loaded  # type: ignore[return-value]


def available() -> bool:
    return load() is not None


# -- the layers' side -----------------------------------------------------------------------

def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """int4 codes [out, in] (0..15, `in` a multiple of 32) in the kernels' layout, uint8
    [out, in // 2]: in each 32 inputs, byte j holds input j (low nibble) and 16 + j (high)."""
    if codes.shape[1] % 32:
        raise ValueError(f"int4 codes need a multiple of 32 inputs, not {codes.shape[1]}")
    c = codes.reshape(codes.shape[0], -1, 2, 16).to(torch.uint8)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(codes.shape[0], -1)


_DENSE = (torch.float32, torch.bfloat16)


def _linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear's forward, through the dense kernel for decoding's 1..8 rows at inference
    (no autograd to record), else F.linear."""
    w = self.weight
    ext = load()
    if (ext is not None and x.dtype == w.dtype and x.dtype in _DENSE and x.device.type == "cpu"
            and 0 < x.numel() <= MAX_ROWS * w.shape[1] and x.shape[-1] == w.shape[1]
            and w.is_contiguous()
            and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
        out = ext.dense(x.reshape(-1, w.shape[1]), w, self.bias)
        return out.view(*x.shape[:-1], w.shape[0])
    return torch.nn.functional.linear(x, w, self.bias)


def use_for_linears(model: torch.nn.Module) -> None:
    """Route the model's plain nn.Linear layers through the kernels when decoding (their
    type, parameters and state_dict keys stay as they are; training and longer inputs go to
    F.linear as before). A no-op when the kernels are off."""
    if os.environ.get("COVE_KERNELS", "1") == "0":
        return
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_linear_forward, module)
