"""What a file page shows besides text: weight files' tensor tables, read from the header only.

safetensors: 8 bytes of header length, then that much JSON; nothing past it is read.
GGUF: `gguf.GGUFReader` memory-maps the file, so only the header's pages are touched.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

# A header larger than this is not a safetensors file we will show (the format caps it at 100 MB).
MAX_HEADER = 100 * 1024 * 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".bmp", ".ico")


@dataclass
class TensorRow:
    name: str
    dtype: str
    shape: list[int]

    @property
    def count(self) -> int:
        return math.prod(self.shape) if self.shape else 1


@dataclass
class WeightsHeader:
    format: str
    tensors: list[TensorRow]
    metadata: list[tuple[str, str]]

    @property
    def parameters(self) -> int:
        return sum(t.count for t in self.tensors)


def safetensors_header(f: BinaryIO) -> WeightsHeader:
    """The tensor table of a safetensors file open at its start; ValueError if it is not one."""
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError("too short for a safetensors file")
    (length,) = struct.unpack("<Q", raw)
    if length > MAX_HEADER:
        raise ValueError("safetensors header too large")
    header = json.loads(f.read(length))
    meta = header.pop("__metadata__", None) or {}
    tensors = [TensorRow(name, str(t["dtype"]), [int(d) for d in t["shape"]])
               for name, t in header.items()]
    return WeightsHeader("safetensors", tensors, [(str(k), str(v)) for k, v in meta.items()])


def gguf_header(path: str) -> WeightsHeader:
    """The tensor table and metadata of a GGUF file on local disk (memory-mapped)."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    meta = []
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            value = f"[{len(field.data)} values]"  # vocabularies: far too long to show
        else:
            value = str(field.contents())
            value = value if len(value) <= 200 else value[:200] + "…"
        meta.append((name, value))
    tensors = [TensorRow(t.name, t.tensor_type.name, [int(d) for d in reversed(t.shape)])
               for t in reader.tensors]
    return WeightsHeader("GGUF", tensors, meta)


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)
