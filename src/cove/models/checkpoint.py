"""Reading and writing weights: safetensors (single or sharded) and weights-only torch files.

Safetensors files are memory-mapped and their tensors are views into the mapping (copy on
write), so loading holds about one copy of the weights. `.bin` files are read with
`weights_only=True`: a pickle that is anything but tensors is refused, never executed.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
PT_INDEX = "pytorch_model.bin.index.json"
DEFAULT_SHARD_SIZE = "50GB"  # transformers 5's default

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}


class CheckpointError(ValueError):
    """A weights file that cannot be loaded: says which file and what is wrong with it."""


class MissingShardError(CheckpointError, FileNotFoundError):
    """A sharded checkpoint's index names a shard that is not there."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _regular_file(path: str | os.PathLike) -> Path:
    """Refuse what is not a regular file: a folder, a device, a FIFO (reading one blocks)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a regular file.")
    return path


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, as zero-copy views into a private memory map."""
    path = _regular_file(path)
    try:
        # The library validates the header: JSON, dtypes, shapes, offsets within the file.
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        try:  # validated above; parsed again here for the offsets, strictly (no duplicate keys)
            header = json.loads(f.read(header_len), object_pairs_hook=_unique_keys)
        except ValueError as e:
            raise CheckpointError(f"{path} has an invalid safetensors header: {e}") from None
        # The header itself always lies in the file, so the mapping is never empty.
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    data = torch.frombuffer(mapped, dtype=torch.uint8)  # keeps `mapped` alive
    base = 8 + header_len
    out = {}
    for name in names:
        info = header[name]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        shape = info["shape"]
        itemsize = torch.empty((), dtype=dtype).element_size()
        # Checked again here, not only by the library: the views below must lie in the file.
        if not (0 <= start <= end <= len(data) - base) or end - start != itemsize * _numel(shape):
            raise CheckpointError(
                f"{path}: tensor {name} has data offsets {[start, end]} that do not fit its "
                f"shape {shape} and dtype {info['dtype']} within the file"
            )
        raw = data[base + start : base + end]
        if (base + start) % itemsize:  # misaligned for a view of this dtype: copy this one
            raw = raw.clone()
        out[name] = raw.view(dtype).view(shape)
    return out


def _numel(shape: list[int]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


_TORCH_ADVICE = ("In PyTorch", "Please file an issue", "Check the documentation",
                 "This file can still be loaded", "Alternatively, to load")


def _unpickling_reason(error: Exception) -> str:
    """The useful part of torch's weights-only refusal, without its advice to turn it off."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [ln.strip().removeprefix("WeightsUnpickler error:").strip()
             for ln in text.splitlines()]
    lines = [ln.split(". Please use")[0] for ln in lines
             if ln and not any(a in ln for a in _TORCH_ADVICE)]
    return "; ".join(lines)[:300] or type(error).__name__


def read_torch_bin(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = _regular_file(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} is not a plain weights file: its pickle asks for more than tensors, or is "
            f"corrupt (refused, nothing in it was run): {_unpickling_reason(e)}"
        ) from None
    except Exception as e:  # a corrupt file fails in many ways (EOFError, KeyError, ...)
        reason = str(e).splitlines()[0][:300] if str(e) else ""
        if not isinstance(e, (RuntimeError, OSError)):
            reason = f"corrupt data ({type(e).__name__}{': ' + reason if reason else ''})"
        if path.is_file() and path.stat().st_size == 0:
            reason = "the file is empty"
        raise CheckpointError(f"{path} is not a readable torch weights file: {reason}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} is not a mapping of parameter names to tensors.")
    return state


def read_index(path: str | os.PathLike) -> dict[str, str]:
    """weight name -> shard file name, from a sharded checkpoint's index."""
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid checkpoint index: {e!r}") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{path}: weight_map must map weight names to shard file names.")
    if not weight_map:
        raise CheckpointError(f"{path}: weight_map is empty, it names no shard.")
    for shard in set(weight_map.values()):
        if (not shard or "/" in shard or "\\" in shard or ":" in shard or "\0" in shard
                or shard.startswith(".")):
            raise CheckpointError(f"{path} names a shard outside its folder: {shard!r}")
    return weight_map


def read_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for p in paths:
        part = read_safetensors(p) if p.suffix == ".safetensors" else read_torch_bin(p)
        for name in part:
            if name in origin:  # shards must not disagree on which tensor a name is
                raise CheckpointError(f"{p}: tensor {name} is also in {origin[name]}")
            origin[name] = p
        state.update(part)
    return state


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)\s*", size.upper())
    if not m:
        raise ValueError(f"Invalid size {size!r}: use bytes or e.g. '500MB', '5GB'.")
    unit = m.group(2)
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    return int(float(m.group(1)) * base**power)


def save_weights(state: dict[str, torch.Tensor], folder: str | os.PathLike,
                 max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> list[str]:
    """Write safetensors, sharded above `max_shard_size`; returns the files written.

    Each file goes to a temp name first, then is renamed; shards of an earlier save that
    the new one does not use are removed, so the folder never mixes two checkpoints.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if sizes[-1] and sizes[-1] + nbytes > limit:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor.contiguous()
        sizes[-1] += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        names = [SAFE_WEIGHTS]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for shard, name in zip(shards, names, strict=True):
        tmp = folder / f".{name}.tmp"
        save_file(shard, str(tmp), metadata=metadata)
        os.replace(tmp, folder / name)
    index_path = folder / SAFE_INDEX
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes)},
                 "weight_map": {k: n for shard, n in zip(shards, names, strict=True) for k in shard}}
        tmp = folder / f".{SAFE_INDEX}.tmp"
        tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, index_path)
    else:
        index_path.unlink(missing_ok=True)
    for old in folder.glob("model-*-of-*.safetensors"):
        if old.name not in names:
            old.unlink()
    if len(shards) > 1:
        (folder / SAFE_WEIGHTS).unlink(missing_ok=True)
    return names
