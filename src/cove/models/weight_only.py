"""Weight-only int8 / int4 linear layers for fast CPU inference, on torch's own kernels.

    from cove import AutoModelForCausalLM, Int4WeightOnlyConfig, TorchAoConfig

    config = TorchAoConfig(Int4WeightOnlyConfig(group_size=64))
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config)

The configuration has transformers 5's shape (`TorchAoConfig(Int4WeightOnlyConfig(...))`, the
torchao config classes under their own names), so code written for transformers + torchao
changes only its import lines; torchao itself is not needed. Its dict form is the one
transformers writes to config.json (`quant_type: {"default": {"_type": ..., "_data": ...}}`).
transformers 4.x's strings ("int8_weight_only", "int4_weight_only" + group_size=) are read too.

Decoding at batch 1 streams every weight once per token, so fewer bytes per weight is speed:
- int8: one int8 per weight, a scale per output row (symmetric, `q = round(w / s)`,
  `s = absmax / 127`), multiplied by `torch.ops.aten._weight_int8pack_mm`.
- int4: groups of `group_size` (32, 64 or 128) consecutive inputs of a row share a scale and
  a zero point (asymmetric: `w = (q - 8) * scale + zero`, q in 0..15), multiplied by
  `torch.ops.aten._weight_int4pack_mm_for_cpu` on the packed layout of
  `_convert_weight_to_int4pack_for_cpu`. A layer whose input width the group does not divide
  takes the largest of 64 and 32 that does (SmolLM2's 576 = 4.5 x 128), or stays in float.

Those CPU kernels are fast only with 16-bit activations (measured on torch 2.13: with float32
inputs they run 4-10x slower than a float32 GEMV), so each layer computes in `compute_dtype`
(bfloat16 by default; float16 accepted), casting its input and output when the model runs in
another dtype; the scales are kept in that dtype. Only inference: these layers have no
backward (QLoRA training uses cove.models.quantization's bitsandbytes-compatible layers).

When Cove's own kernels are built (cove.kernels, the usual case), decoding's 1..8 rows go
through them instead, with float32 accumulation: torch's kernels are slow at one row. int4
codes are then packed in the kernels' layout; on CPUs with AVX512-VNNI the int4 products
take the activations quantised to int8 in blocks of 32 (llama.cpp's Q8_0), and a prompt's
many rows too, in integer products with the quantisation's remainder quantised again (near
float32's product: one pass alone flipped near-tied first answer tokens; cove.kernels'
prefill.cpp). Without VNNI, float32 activations, and a prompt goes through the dequantised
float32 weight (a slice of rows at a time) and torch's GEMM. int8 weights keep float32
activations (a prompt: the float32 weight in slices, torch's GEMM). COVE_KERNELS=0 keeps
torch's kernels.

The output head (lm_head) is quantised, to int8 also under an int4 config (the output is the
layer most sensitive to rounding: on SmolLM2-135M an int4 head cost 10 points of top-1
agreement with float32, an int8 one none measurable): it is read every step (28% of
SmolLM2-135M's weights). A head tied to the token embedding stays tied, as transformers
keeps a tied embedding quantised with `include_input_output_embeddings=True`: one int8 table
serves the lookups and the product (a float embedding beside the int8 copy cost 1.25x the
head's float size again: SmolLM2's int4 model was 3.2x its Q4_1 GGUF's size, now 1.1x). The
int8 lookups cost little agreement: SmolLM2's top-1 with float32 over 576 greedy tokens,
int8 96.2% -> 95.8%, int4 g32 97.6% -> 96.9%.
`untie_embedding_weights=True` gives the head its own copy and keeps the embedding in float.
An untied embedding stays in float unless `include_input_output_embeddings=True` (then int8
rows, a scale per row).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cove import kernels

log = logging.getLogger("cove.models")

QUANT_METHOD = "torchao"
GROUP_SIZES = (32, 64, 128)
_COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# Rows quantised at once: bounds the float32 and int32 temporaries of a large head (a multiple
# of 64, the widest block of rows the int4 packing interleaves, so packed chunks concatenate).
ROW_CHUNK = 4096
# Rows quantised to int8 at once (1 MiB of float32 at SmolLM2's width, as gguf's _ROWS).
INT8_ROWS = 512


# -- configuration ----------------------------------------------------------------------------

class Int8WeightOnlyConfig:
    """torchao's name: int8 weights, one scale per output channel; activations unquantised."""

    bits = 8

    def __init__(self, group_size: int | None = None, **_ignored: Any) -> None:
        if group_size is not None:
            raise ValueError("Int8WeightOnlyConfig takes no group_size in Cove: its int8 "
                             "weights have one scale per output channel.")
        self.group_size = None

    def to_dict(self) -> dict[str, Any]:
        return {"_type": type(self).__name__, "_version": 2, "_data": {}}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __repr__(self) -> str:
        return "Int8WeightOnlyConfig()"


class Int4WeightOnlyConfig:
    """torchao's name: int4 weights in groups of `group_size` inputs (scale and zero point per
    group; 128 by default, as torchao); activations unquantised."""

    bits = 4

    def __init__(self, group_size: int = 128, **_ignored: Any) -> None:
        if group_size not in GROUP_SIZES:
            raise ValueError(f"Int4WeightOnlyConfig(group_size={group_size!r}): use one of "
                             f"{', '.join(map(str, GROUP_SIZES))}.")
        self.group_size = group_size

    def to_dict(self) -> dict[str, Any]:
        return {"_type": type(self).__name__, "_version": 2,
                "_data": {"group_size": self.group_size}}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.group_size == self.group_size

    def __repr__(self) -> str:
        return f"Int4WeightOnlyConfig(group_size={self.group_size})"


_TYPES = {"Int8WeightOnlyConfig": Int8WeightOnlyConfig,
          "Int4WeightOnlyConfig": Int4WeightOnlyConfig}
_LEGACY = {"int8_weight_only": Int8WeightOnlyConfig, "int4_weight_only": Int4WeightOnlyConfig}


def _quant_type(value: Any, kwargs: dict[str, Any]) -> Int8WeightOnlyConfig | Int4WeightOnlyConfig:
    """Ours, torchao's object of the same name (duck-typed), a 4.x string, or the dict form."""
    if isinstance(value, (Int8WeightOnlyConfig, Int4WeightOnlyConfig)):
        return value
    if isinstance(value, str):
        if value not in _LEGACY:
            raise ValueError(f"TorchAoConfig quant_type {value!r}: Cove runs "
                             f"{', '.join(_LEGACY)} (or Int8WeightOnlyConfig() / "
                             "Int4WeightOnlyConfig(group_size=...)).")
        return _LEGACY[value](**{k: v for k, v in kwargs.items() if k == "group_size"})
    if isinstance(value, dict):
        if set(value) == {"default"}:
            value = value["default"]
        name = value.get("_type")
        if name not in _TYPES:
            raise ValueError(f"TorchAoConfig quant_type {name!r}: Cove runs "
                             f"{', '.join(_TYPES)}.")
        return _TYPES[name](**dict(value.get("_data") or {}))
    name = type(value).__name__
    if name in _TYPES:  # torchao's own config object
        group = getattr(value, "group_size", None)
        return _TYPES[name](**({"group_size": group} if name.startswith("Int4") else {}))
    raise TypeError(f"TorchAoConfig quant_type must be Int8WeightOnlyConfig() or "
                    f"Int4WeightOnlyConfig(group_size=...), not {name}.")


class TorchAoConfig:
    """transformers' TorchAoConfig for Cove's weight-only int8 / int4 inference layers.

    `quant_type`: Int8WeightOnlyConfig() or Int4WeightOnlyConfig(group_size=32|64|128).
    `modules_to_not_convert`: module names (or a run of them, e.g. "lm_head") kept in float.
    `include_input_output_embeddings`: store the token embedding as int8 rows too (a tied
    one always is, when its head is quantised).
    `untie_embedding_weights`: a quantised head tied to the embedding gets its own copy; the
    embedding stays in float (or its own int8 rows with include_input_output_embeddings).
    `compute_dtype` (Cove's): the activations' dtype inside the quantised layers.
    """

    def __init__(self, quant_type: Any, modules_to_not_convert: list[str] | None = None,
                 include_input_output_embeddings: bool = False,
                 untie_embedding_weights: bool = False,
                 compute_dtype: str | torch.dtype = "bfloat16", **kwargs: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.quant_type = _quant_type(quant_type, kwargs)
        unknown = sorted(set(kwargs) - {"group_size", "quant_type_kwargs"})
        if unknown:
            raise ValueError(f"TorchAoConfig got unknown arguments {unknown}.")
        if modules_to_not_convert is not None and (
                isinstance(modules_to_not_convert, str)
                or not all(isinstance(m, str) for m in modules_to_not_convert)):
            raise TypeError("modules_to_not_convert must be a list of module names, not "
                            f"{modules_to_not_convert!r}")
        self.modules_to_not_convert = (None if modules_to_not_convert is None
                                       else list(modules_to_not_convert))
        self.include_input_output_embeddings = bool(include_input_output_embeddings)
        self.untie_embedding_weights = bool(untie_embedding_weights)
        name = str(compute_dtype).removeprefix("torch.")
        if name not in _COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype={compute_dtype!r}: the CPU int8/int4 kernels are "
                             "fast with bfloat16 or float16 activations; use one of those.")
        self.compute_dtype = _COMPUTE_DTYPES[name]

    @property
    def bits(self) -> int:
        return self.quant_type.bits

    @property
    def group_size(self) -> int | None:
        return self.quant_type.group_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TorchAoConfig:
        data = dict(data)
        method = data.pop("quant_method", QUANT_METHOD)
        if str(getattr(method, "value", method)) != QUANT_METHOD:
            raise ValueError(f"quant_method {method!r} is not {QUANT_METHOD!r}")
        kwargs = data.pop("quant_type_kwargs", None) or {}
        return cls(data.pop("quant_type"), **data, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": self.quant_method,
                "quant_type": {"default": self.quant_type.to_dict()},
                "modules_to_not_convert": self.modules_to_not_convert,
                "include_input_output_embeddings": self.include_input_output_embeddings,
                "untie_embedding_weights": self.untie_embedding_weights}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TorchAoConfig) and self.to_dict() == other.to_dict() \
            and self.compute_dtype == other.compute_dtype

    def __repr__(self) -> str:
        return f"TorchAoConfig({self.to_dict()})"


def is_torchao_config(value: Any) -> bool:
    """Whether `quantization_config=` names a weight-only (torchao) configuration."""
    if isinstance(value, TorchAoConfig):
        return True
    if isinstance(value, dict):
        method = value.get("quant_method")
        return str(getattr(method, "value", method)) == QUANT_METHOD
    return type(value).__name__ == "TorchAoConfig"


def coerce(value: Any) -> TorchAoConfig:
    """A TorchAoConfig from ours, transformers' (through its fields) or the dict form."""
    if isinstance(value, TorchAoConfig):
        return value
    if isinstance(value, dict):
        return TorchAoConfig.from_dict(value)
    return TorchAoConfig(value.quant_type,
                         modules_to_not_convert=getattr(value, "modules_to_not_convert", None),
                         include_input_output_embeddings=getattr(
                             value, "include_input_output_embeddings", False),
                         untie_embedding_weights=getattr(value, "untie_embedding_weights",
                                                         False))


# -- quantisation -----------------------------------------------------------------------------

def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [out, in], float32 scale [out]) with w ~ q * scale, row-symmetric."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, 1.0)
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def quantize_int8_rows(weight: torch.Tensor, page_out: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_int8, a slice of INT8_ROWS rows at a time into the result: temporaries of one
    slice only (at once, a head's float32 copy and quotients were twice its float size). With
    `page_out`, each slice of a memory-mapped weight leaves this process's memory once read
    (SmolLM2's tied head: its 108 MiB of float32 would otherwise be resident at the load's
    end)."""
    from cove.models.quantization import _page_out

    q = torch.empty(weight.shape, dtype=torch.int8)
    scale = torch.empty(weight.shape[0], dtype=torch.float32)
    for r in range(0, weight.shape[0], INT8_ROWS):
        part = weight[r:r + INT8_ROWS]
        q[r:r + INT8_ROWS], scale[r:r + INT8_ROWS] = quantize_int8(part)
        if page_out:
            _page_out(part)
    return q, scale


def quantize_int4(weight: torch.Tensor, group_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes int32 [out, in] in 0..15, scale and zero float32 [out, in // group_size]) with
    w ~ (q - 8) * scale + zero: each group's min..max split into 15 steps."""
    w = weight.detach().float().view(weight.shape[0], -1, group_size)
    low, high = w.amin(dim=2), w.amax(dim=2)
    scale = (high - low) / 15
    scale = torch.where(scale > 0, scale, 1.0)
    codes = torch.round((w - low[..., None]) / scale[..., None]).clamp_(0, 15)
    return codes.to(torch.int32).view(weight.shape), scale, low + 8 * scale


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Codes [out, in] (0..15) in the layout this process multiplies with, uint8
    [out, in // 2]: cove.kernels' when they are built, else that of torch's CPU kernel (rows
    in chunks)."""
    if kernels.available():
        return kernels.pack_int4(codes)
    codes = codes.to(torch.int32)
    parts = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes[r:r + ROW_CHUNK], 1)
             for r in range(0, codes.shape[0], ROW_CHUNK)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def int4_group_size(in_features: int, group_size: int, out_features: int = 16) -> int | None:
    """The group size used for a layer: `group_size`, or the largest smaller one dividing
    its input width (None: none does, or the kernel's packing needs a multiple of 16 outputs
    and the layer has not)."""
    if out_features % 16:
        return None
    for size in sorted((g for g in GROUP_SIZES if g <= group_size), reverse=True):
        if in_features % size == 0:
            return size
    return None


# -- layers -----------------------------------------------------------------------------------

class _WeightOnly(nn.Module):
    """What the int8 and int4 layers share: shapes, bias, the compute dtype's casts, buffers
    kept in their dtypes through .to()/.half(), and no `weight`."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype) -> None:
        super().__init__()
        if compute_dtype not in _COMPUTE_DTYPES.values():
            raise ValueError(f"compute_dtype {compute_dtype}: use bfloat16 or float16")
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    def __getattr__(self, name: str) -> Any:
        if name == "weight":
            raise AttributeError(f"{type(self).__name__} keeps its weight quantised, so it has "
                                 "no `weight`: call dequantize() for the float weight.")
        return super().__getattr__(name)

    def _apply(self, fn, recurse: bool = True):
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in before.items():  # codes and scales keep their dtypes
            new = self._buffers[name]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        ext = kernels.load()
        if ext is not None and h.device.type == "cpu" and h.shape[0] > 0:
            # Decoding's few rows: float32 activations in Cove's kernel, bias included.
            out = self._gemv(ext, h) if h.shape[0] <= kernels.MAX_ROWS else self._wide(ext, h)
            if out is not None:
                return out.view(*shape[:-1], self.out_features)
        if h.dtype != self.compute_dtype:
            h = h.to(self.compute_dtype)
        out = self._mm(h.contiguous())
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.view(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}")


class Int8WeightOnlyLinear(_WeightOnly):
    """y = x @ (q * scale).T + b, q int8 [out, in], one scale per output row."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__(qweight.shape[1], qweight.shape[0], bias, compute_dtype)
        self.register_buffer("qweight", qweight.to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(compute_dtype).contiguous())

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    compute_dtype: torch.dtype = torch.bfloat16) -> Int8WeightOnlyLinear:
        q, scale = quantize_int8_rows(weight)
        return cls(q, scale, bias, compute_dtype)

    def _mm(self, h: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(h, self.qweight, self.scale)

    def _gemv(self, ext: Any, h: torch.Tensor) -> torch.Tensor:
        return ext.int8_linear(h, self.qweight, self.scale, self.bias)

    def _wide(self, ext: Any, h: torch.Tensor) -> torch.Tensor:
        """More rows than decoding's (a prompt): with AVX512-VNNI (and inputs in blocks of 32),
        integer products on x quantised twice over as Int4WeightOnlyLinear's prompts do,
        ext.int8_gemm; else float32 activations as in the kernel, over the float32 weight a
        slice of rows (4 MiB) at a time, in torch's GEMM."""
        if ext.has_int4_gemm() and self.in_features % 32 == 0:
            return ext.int8_gemm(h, self.qweight, self.scale, self.bias).to(h.dtype)
        x = h.float()
        step = max(64, (1 << 20) // self.in_features)
        scale = self.scale.float()[:, None]
        # Scaled in place: a second slice-sized temporary doubled the dequantising's CPU time
        # (measured at SmolLM2's layer shapes, one thread: 11 -> 5.8 ms a layer, against
        # ~45 ms for the GEMM of 512 rows).
        parts = [F.linear(x, self.qweight[r:r + step].float().mul_(scale[r:r + step]))
                 for r in range(0, self.out_features, step)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(h.dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qweight.float() * self.scale.float()[:, None]).to(dtype)


class Int4WeightOnlyLinear(_WeightOnly):
    """y = x @ ((q - 8) * scale + zero).T + b, q in 0..15, a scale and zero point per group of
    `group_size` inputs; q packed by `pack_int4` (`qweight`, [out, in // 2]).

    Two layouts, chosen once per process by whether cove.kernels is built: Cove's (buffers
    `qweight`, `scale`, `zero` [out, in // group_size]; decoding's few rows through the
    kernel, longer inputs through the dequantised weight and torch's GEMM), or that of torch's
    CPU kernel (`qweight`, `scales_and_zeros` [in // group_size, out, 2])."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                 group_size: int, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.bfloat16) -> None:
        out_features, half = qweight.shape
        if half * 2 % group_size:
            raise ValueError(f"in_features {half * 2} is not a multiple of group_size "
                             f"{group_size}")
        super().__init__(half * 2, out_features, bias, compute_dtype)
        self.group_size = group_size
        self.register_buffer("qweight", qweight)
        self.cove_layout = kernels.available()
        if self.cove_layout:
            self.register_buffer("scale", scale.to(compute_dtype).contiguous())
            self.register_buffer("zero", zero.to(compute_dtype).contiguous())
        else:
            pairs = torch.stack([scale.t(), zero.t()], dim=-1).to(compute_dtype).contiguous()
            self.register_buffer("scales_and_zeros", pairs)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    group_size: int = 128, compute_dtype: torch.dtype = torch.bfloat16
                    ) -> Int4WeightOnlyLinear:
        """Quantised from a float weight [out, in], a slice of rows at a time."""
        packed, scales, zeros = [], [], []
        for r in range(0, weight.shape[0], ROW_CHUNK):
            codes, scale, zero = quantize_int4(weight[r:r + ROW_CHUNK], group_size)
            packed.append(pack_int4(codes))
            scales.append(scale)
            zeros.append(zero)
        return cls(torch.cat(packed), torch.cat(scales), torch.cat(zeros), group_size, bias,
                   compute_dtype)

    def _mm(self, h: torch.Tensor) -> torch.Tensor:
        if self.cove_layout:
            raise RuntimeError("Int4WeightOnlyLinear packed for cove.kernels runs on the CPU "
                               f"only, not on {h.device}")
        return torch.ops.aten._weight_int4pack_mm_for_cpu(h, self.qweight, self.group_size,
                                                          self.scales_and_zeros)

    def _gemv(self, ext: Any, h: torch.Tensor) -> torch.Tensor:
        return ext.int4_linear(h, self.qweight, self.scale, self.zero, self.group_size,
                               self.bias)

    def _wide(self, ext: Any, h: torch.Tensor) -> torch.Tensor | None:
        """More rows than decoding's (a prompt): with AVX512-VNNI, integer products on x
        quantised to int8 in blocks of 32 twice over (x, then what that missed: 2^-16 of
        each block's largest value; one pass, or bfloat16 activations, flipped SmolLM2's
        near-tied first answer tokens), ext.int4_gemm; else float32 x and the float32
        weight, a slice of rows at a time (4 MiB), in torch's GEMM."""
        if not self.cove_layout:
            return None
        if ext.has_int4_gemm():
            return ext.int4_gemm(h, self.qweight, self.scale, self.zero, self.group_size,
                                 self.bias).to(h.dtype)
        x = h.float()
        step = max(64, (1 << 20) // self.in_features)
        parts = [F.linear(x, ext.int4_dequantize(self.qweight[r:r + step],
                                                 self.scale[r:r + step],
                                                 self.zero[r:r + step], self.group_size))
                 for r in range(0, self.out_features, step)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(h.dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [out, in]."""
        if self.cove_layout:
            return kernels.load().int4_dequantize(self.qweight, self.scale, self.zero,
                                                  self.group_size).to(dtype)
        # torch's packed layout is its kernel's own: read back as the product with the
        # identity, a slice of inputs at a time.
        eye = torch.eye(self.in_features, dtype=self.compute_dtype)
        cols = [self._mm(eye[i:i + ROW_CHUNK]) for i in range(0, self.in_features, ROW_CHUNK)]
        return torch.cat(cols).t().to(dtype).contiguous()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


class Int8Embedding(nn.Module):
    """A token embedding stored as int8 rows and a scale per row (the rows of an
    Int8WeightOnlyLinear when the head is tied to it: shared, not copied)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor,
                 dtype: torch.dtype = torch.float32, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.padding_idx = padding_idx
        self.dtype = dtype
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)

    def _apply(self, fn, recurse: bool = True):
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.qweight)
        return (rows.to(self.dtype) * F.embedding(ids, self.scale[:, None]).to(self.dtype))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qweight.float() * self.scale.float()[:, None]).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


WEIGHT_ONLY_LAYERS = (Int8WeightOnlyLinear, Int4WeightOnlyLinear)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim). Quantising a
    model frees many mid-sized temporaries, which glibc keeps mapped (its mmap threshold
    rises as they are freed): without this, the process stays twice the model's size."""
    from cove.models.quantization import _libc

    trim = getattr(_libc(), "malloc_trim", None) if sys.platform.startswith("linux") else None
    if trim is not None:
        trim(0)


# -- models -----------------------------------------------------------------------------------

def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def modules_to_quantize(model: nn.Module, config: TorchAoConfig) -> list[str]:
    """The nn.Linear layers `config` quantises: all but those in modules_to_not_convert."""
    from cove.models.quantization import _matches

    skip = config.modules_to_not_convert or []
    return [name for name, module in model.named_modules()
            if name and type(module) is nn.Linear and not any(_matches(name, p) for p in skip)]


def _plan(model: nn.Module, config: TorchAoConfig
          ) -> tuple[dict[str, int | None], str | None, str | None]:
    """What quantize_model replaces, decided on shapes only (so also on a model whose weights
    are still on the meta device): {linear name: int4 group, None for int8}, the input
    embedding's name when it becomes int8 rows (else None), and the name of the tied head
    whose int8 rows those are (None: the embedding's own rows)."""
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    layers: dict[str, int | None] = {}
    head_name = None
    for name in modules_to_quantize(model, config):
        module = model.get_submodule(name)
        if module is head:
            head_name = name
        if config.bits == 8 or module is head:
            # The head in int8 even for int4 layers (as llama.cpp's Q4_K_M keeps its output in
            # Q6_K): on SmolLM2-135M an int4 head cost 10 points of top-1 agreement.
            layers[name] = None
        else:
            group = int4_group_size(module.in_features, config.group_size, module.out_features)
            if group is not None:  # else the layer stays in float
                layers[name] = group
    if not isinstance(embed, nn.Embedding):
        return layers, None, None
    embed_name = next(n for n, m in model.named_modules() if m is embed)
    if head_name is not None and head.weight is embed.weight \
            and not config.untie_embedding_weights:
        return layers, embed_name, head_name
    return layers, embed_name if config.include_input_output_embeddings else None, None


def replaced_weights(model: nn.Module, config: TorchAoConfig) -> set[str]:
    """The names of the float weights quantize_model(model, config) replaces: from_pretrained
    leaves them in the checkpoint's dtype and memory map (no cast copy of the whole model)."""
    layers, embed_name, _ = _plan(model, config)
    names = {f"{n}.weight" for n in layers}
    return names | {f"{embed_name}.weight"} if embed_name else names


@torch.no_grad()
def quantize_model(model: nn.Module, config: TorchAoConfig,
                   release_float: bool = False) -> list[str]:
    """Replace the linear layers by weight-only int8/int4 ones, in place; returns their names.

    A head tied to the input embedding is quantised to int8 rows that the embedding's lookups
    share (Int8Embedding), unless config.untie_embedding_weights. With `release_float`, each
    float weight read from a memory-mapped checkpoint leaves memory once quantised (the head a
    slice of rows at a time), and each layer's freed temporaries go back to the system, so
    the model is never resident in float. Marks the model as transformers does
    (is_quantized, quantization_config)."""
    from cove.models.quantization import _page_out

    layers, embed_name, shared_head = _plan(model, config)
    for name in modules_to_quantize(model, config):
        module = model.get_submodule(name)
        if name not in layers:
            log.info("%s: %d x %d (outputs not a multiple of 16 or inputs of 32) cannot be "
                     "packed in int4: kept in float", name, module.out_features,
                     module.in_features)
        elif layers[name] not in (None, config.group_size):
            log.info("%s: %d inputs are not a multiple of group_size %d: group of %d", name,
                     module.in_features, config.group_size, layers[name])
    replaced = {f"{n}.weight" for n in layers} | ({f"{embed_name}.weight"} if embed_name
                                                   else set())
    # The float dtype the model runs in: that of a weight kept in float (the replaced ones
    # were left in the checkpoint's dtype by from_pretrained).
    dtype = next((p.dtype for n, p in model.named_parameters(remove_duplicate=False)
                  if n not in replaced and p.is_floating_point()), torch.float32)
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    quantized: dict[str, nn.Module] = {}
    for name, group in layers.items():
        module = model.get_submodule(name)
        # A head tied to an embedding that stays in float: those rows are still in use.
        keep = embed_name is None and module.weight is getattr(embed, "weight", None)
        release = release_float and not keep
        if group is None:
            q, scale = quantize_int8_rows(module.weight, page_out=release)
            layer = Int8WeightOnlyLinear(q, scale, module.bias, config.compute_dtype)
        else:
            layer = Int4WeightOnlyLinear.from_weight(module.weight, module.bias, group,
                                                     config.compute_dtype)
            if release:
                _page_out(module.weight)
        quantized[name] = layer
        _set_module(model, name, layer)
        if release_float:
            # The layer's temporaries back to the system before the next (as gguf's loader).
            release_freed_memory()
    if embed_name is not None:
        if shared_head is not None:  # the tied head's int8 rows, shared
            q, scale = quantized[shared_head].qweight, quantized[shared_head].scale.float()
        else:
            q, scale = quantize_int8_rows(embed.weight, page_out=release_float)
        _set_module(model, embed_name, Int8Embedding(q, scale, dtype, embed.padding_idx))
    # The tie is realised by the shared int8 rows (or given up for the copy): none to redo.
    model.tied_weights = {}
    release_freed_memory()
    model.is_quantized = True
    model.quantization_config = config
    return list(layers)
