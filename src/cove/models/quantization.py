"""Quantised linear layers, bitsandbytes-compatible: 4-bit NF4/FP4 (QLoRA) and 8-bit absmax.

`from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True))` loads the
float checkpoint and replaces each linear layer (not the output head, not tied or skipped
modules) by a `Linear4bit` or `Linear8bitLt` that keeps only the packed codes and their scales.
Their forward dequantises the weight on the fly, a slice of rows at a time, and multiplies in
the compute dtype; the backward dequantises again rather than keeping the float weight, so a
quantised base stays small while adapters on top of it train. This is Cove's own path, on
any device; bitsandbytes, when installed, runs the 4-bit matmul on CUDA (same storage
format: codes packed high nibble first, float32 absmax per block of 64, nested 8-bit absmax
in blocks of 256 with an offset).

The formats (every dequantised value follows exactly from these):
- 4-bit: the flattened weight in blocks of 64; each block's absmax `a`; each value is stored
  as the index of the nearest of 16 levels to `w / a` (NF4_CODE or FP4_CODE) and
  dequantised as `a * level`.
- double quantisation (bnb_4bit_use_double_quant): the float32 absmax vector minus its mean
  (the offset) is quantised again in blocks of 256 to the nearest of 256 levels of the
  "dynamic" 8-bit map, each block scaled by its own absmax: `absmax = level * s + offset`.
- 8-bit: each output row's absmax `a`; `q = round(w * 127 / a)` in int8, dequantised as
  `q * (a / 127)`. This is LLM.int8's storage without its outlier decomposition: Cove never
  quantises the activations (the weight is dequantised and multiplied in float), so there
  are no int8 activation columns for the decomposition to protect; `llm_int8_threshold` is
  accepted and has no effect.

For cove.peft: the quantised layers have `in_features`, `out_features`, `forward(x)`,
`dequantize()` (the float weight) and `quantize_(weight)` (store a new weight, e.g. after a
merge), and deliberately no `weight`. `prepare_model_for_kbit_training` is peft's function.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import mmap
import re
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("cove.models")

QUANT_METHOD = "bitsandbytes"
BLOCKSIZE = 64  # 4-bit block (bitsandbytes' and QLoRA's)
NESTED_BLOCKSIZE = 256  # double quantisation's block over the absmax vector (QLoRA)
# Elements dequantised at once (16 MiB of float32): bounds the temporary float weight of one
# big layer; SmolLM2-size layers (under 1M elements) are one slice.
CHUNK_ELEMENTS = 1 << 22
# Elements quantised at once: small, equal-sized temporaries, which the allocator reuses from
# one slice and layer to the next instead of leaving the heap fragmented by every layer size.
QUANTIZE_ELEMENTS = 1 << 16

# NF4, QLoRA's "4-bit NormalFloat" (appendix E of the paper, and bitsandbytes' table): the
# 4-bit levels that split N(0, 1) into equal-probability bins, scaled to [-1, 1]. With an exact
# zero, the halves are asymmetric: 8 positive levels are the normal quantiles at 8 equally
# spaced probabilities from d down to 0.5 (excluded), 7 negative ones the same with 7, where
# d = 1 - (1/32 + 1/30) / 2 = 0.9677 is the mean of the outermost bin centres of a 16- and a
# 15-level split (the quantile at 1 itself is infinite); then each is divided by the largest.
# tests/models/test_quantization.py recomputes them from that recipe (torch.special.ndtri).
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
# FP4 as bitsandbytes defines it: bit 3 is the sign, bits 2-0 index these magnitudes (two
# exponent bits, one mantissa bit: 2^3*{1, 1.5}, 2^2*{1, 1.5}, 2^1*{1, 1.5}, and the
# subnormal pair 0, 2^-4), divided by the largest, 12.
_FP4_MAGNITUDES = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)
FP4_CODE = tuple(m / 12 for m in _FP4_MAGNITUDES) + tuple(-m / 12 for m in _FP4_MAGNITUDES)
CODES = {"nf4": NF4_CODE, "fp4": FP4_CODE}


def dynamic_map() -> torch.Tensor:
    """The 256 levels of bitsandbytes' signed "dynamic" 8-bit code (Dettmers' dynamic tree
    quantisation), used for the nested absmax: for each decade 10^-6 .. 10^0, 2^k linear
    steps (k = 0..6) over [0.1, 1) of that decade, at their bin centres, both signs; plus 0
    and 1. Float32 arithmetic throughout, which gives bitsandbytes' values bit for bit."""
    levels: list[float] = [0.0, 1.0]
    for k in range(7):
        edges = torch.linspace(0.1, 1, 2**k + 1)
        centres = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (k - 6)
        levels += centres.tolist() + (-centres).tolist()
    return torch.tensor(sorted(levels), dtype=torch.float32)


_FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_STORAGE_DTYPES = {"uint8": torch.uint8, "int8": torch.int8, "float16": torch.float16,
                   "bfloat16": torch.bfloat16, "float32": torch.float32,
                   "float64": torch.float64}


def _dtype_field(field: str, value: Any, allowed: dict[str, torch.dtype]) -> torch.dtype:
    name = str(value).removeprefix("torch.")
    if name not in allowed:
        raise ValueError(f"{field}={value!r} is not supported: use one of "
                         f"{', '.join(allowed)}.")
    return allowed[name]


class BitsAndBytesConfig:
    """transformers' BitsAndBytesConfig (the same field names and defaults) for Cove's
    quantised loading; `from_dict` also reads config.json's `quantization_config` form."""

    def __init__(self, load_in_8bit: bool = False, load_in_4bit: bool = False,
                 llm_int8_threshold: float = 6.0, llm_int8_skip_modules: list[str] | None = None,
                 llm_int8_enable_fp32_cpu_offload: bool = False,
                 llm_int8_has_fp16_weight: bool = False,
                 bnb_4bit_compute_dtype: str | torch.dtype | None = None,
                 bnb_4bit_quant_type: str = "fp4", bnb_4bit_use_double_quant: bool = False,
                 bnb_4bit_quant_storage: str | torch.dtype | None = None) -> None:
        for field, value in (("load_in_8bit", load_in_8bit), ("load_in_4bit", load_in_4bit),
                             ("llm_int8_enable_fp32_cpu_offload",
                              llm_int8_enable_fp32_cpu_offload),
                             ("llm_int8_has_fp16_weight", llm_int8_has_fp16_weight),
                             ("bnb_4bit_use_double_quant", bnb_4bit_use_double_quant)):
            if not isinstance(value, bool):
                raise TypeError(f"{field} must be True or False, not {value!r}")
        if load_in_4bit and load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are both True: choose one.")
        if llm_int8_has_fp16_weight:
            raise ValueError("llm_int8_has_fp16_weight=True (trainable 16-bit weights beside "
                             "the int8 ones) is not supported by Cove: train adapters on the "
                             "quantised base instead.")
        if bnb_4bit_quant_type not in CODES:
            raise ValueError(f"bnb_4bit_quant_type={bnb_4bit_quant_type!r}: use 'nf4' or "
                             "'fp4'.")
        if isinstance(llm_int8_threshold, bool) or not isinstance(llm_int8_threshold,
                                                                   (int, float)):
            raise TypeError(f"llm_int8_threshold must be a number, not {llm_int8_threshold!r}")
        if llm_int8_skip_modules is not None and (
                isinstance(llm_int8_skip_modules, str)
                or not all(isinstance(m, str) for m in llm_int8_skip_modules)):
            raise TypeError("llm_int8_skip_modules must be a list of module names, not "
                            f"{llm_int8_skip_modules!r}")
        self.load_in_8bit, self.load_in_4bit = load_in_8bit, load_in_4bit
        self.llm_int8_threshold = float(llm_int8_threshold)
        self.llm_int8_skip_modules = (None if llm_int8_skip_modules is None
                                      else list(llm_int8_skip_modules))
        self.llm_int8_enable_fp32_cpu_offload = llm_int8_enable_fp32_cpu_offload
        self.llm_int8_has_fp16_weight = llm_int8_has_fp16_weight
        self.bnb_4bit_compute_dtype = _dtype_field(
            "bnb_4bit_compute_dtype", bnb_4bit_compute_dtype or "float32", _FLOAT_DTYPES)
        self.bnb_4bit_quant_type = bnb_4bit_quant_type
        self.bnb_4bit_use_double_quant = bnb_4bit_use_double_quant
        self.bnb_4bit_quant_storage = _dtype_field(
            "bnb_4bit_quant_storage", bnb_4bit_quant_storage or "uint8", _STORAGE_DTYPES)
        self.quant_method = QUANT_METHOD

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BitsAndBytesConfig:
        """From the dict form (config.json's `quantization_config`, transformers' to_dict)."""
        data = dict(data)
        method = data.pop("quant_method", QUANT_METHOD)
        if str(getattr(method, "value", method)) != QUANT_METHOD:
            raise ValueError(f"quantization_config has quant_method {method!r}: Cove loads only "
                             f"{QUANT_METHOD!r} (load_in_4bit / load_in_8bit) configurations.")
        for private in ("_load_in_4bit", "_load_in_8bit"):  # transformers' to_dict has both
            if private in data:
                data.setdefault(private[1:], data.pop(private))
        fields = set(cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount])
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"quantization_config has unknown fields {unknown}: "
                             f"BitsAndBytesConfig takes {', '.join(sorted(fields))}.")
        return cls(**data)

    @classmethod
    def coerce(cls, value: BitsAndBytesConfig | dict[str, Any]) -> BitsAndBytesConfig:
        """A config from `quantization_config=` (this class, transformers' or a dict)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if callable(getattr(value, "to_dict", None)):  # e.g. transformers.BitsAndBytesConfig
            return cls.from_dict(value.to_dict())
        raise TypeError("quantization_config must be a BitsAndBytesConfig or its dict form, "
                        f"not {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """The dict form, as transformers writes it (dtypes by name)."""
        return {
            "quant_method": self.quant_method, "load_in_4bit": self.load_in_4bit,
            "load_in_8bit": self.load_in_8bit, "llm_int8_threshold": self.llm_int8_threshold,
            "llm_int8_skip_modules": self.llm_int8_skip_modules,
            "llm_int8_enable_fp32_cpu_offload": self.llm_int8_enable_fp32_cpu_offload,
            "llm_int8_has_fp16_weight": self.llm_int8_has_fp16_weight,
            "bnb_4bit_compute_dtype": str(self.bnb_4bit_compute_dtype).removeprefix("torch."),
            "bnb_4bit_quant_type": self.bnb_4bit_quant_type,
            "bnb_4bit_use_double_quant": self.bnb_4bit_use_double_quant,
            "bnb_4bit_quant_storage": str(self.bnb_4bit_quant_storage).removeprefix("torch."),
        }

    def quantization_method(self) -> str | None:
        """"llm_int8", "nf4", "fp4", or None when nothing is quantised."""
        if self.load_in_8bit:
            return "llm_int8"
        return self.bnb_4bit_quant_type if self.load_in_4bit else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BitsAndBytesConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"BitsAndBytesConfig({self.to_dict()})"


# -- the quantisation functions --------------------------------------------------------------

_TABLES: dict[tuple[str, torch.device], torch.Tensor] = {}


def _table(name: str, device: torch.device) -> torch.Tensor:
    """A code's levels (float32) on a device; "nf4"/"fp4" also as "<name>-pairs": the two
    levels of every byte (high nibble first) as one 64-bit item, so one lookup decodes a
    byte (a 1-D gather of 8-byte items is several times faster than one of 2-float rows)."""
    key = (name, device)
    if key not in _TABLES:
        if name == "dynamic":
            table = dynamic_map()
        elif name.endswith("-pairs"):
            code = torch.tensor(CODES[name.removesuffix("-pairs")], dtype=torch.float32)
            byte = torch.arange(256)
            table = torch.stack([code[byte >> 4], code[byte & 15]], dim=1).view(torch.int64)
            table = table.view(-1)
        else:
            table = torch.tensor(CODES[name], dtype=torch.float32)
        _TABLES[key] = table.to(device)
    return _TABLES[key]


def nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The index (uint8) of the nearest of `levels` to each value of x (ties: the lower)."""
    ordered, order = levels.sort()
    bounds = (ordered[1:] + ordered[:-1]) / 2
    return order.to(torch.uint8)[torch.bucketize(x, bounds, out_int32=True)]


def _blocks_absmax(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad a flat float32 tensor to whole blocks: the blocks and each one's absmax."""
    pad = -flat.numel() % blocksize
    blocks = F.pad(flat, (0, pad)).view(-1, blocksize)
    return blocks, blocks.abs().amax(dim=1)


def _scaled(blocks: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    # An all-zero block has absmax 0: divide by 1 instead (its values stay 0).
    return blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]


def quantize_4bit(weight: torch.Tensor, quant_type: str = "nf4"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 codes, float32 absmax per block of 64) of a tensor, flattened row-major
    and zero-padded to whole blocks; two codes per byte, the first in the high nibble."""
    if quant_type not in CODES:
        raise ValueError(f"quant_type={quant_type!r}: use 'nf4' or 'fp4'.")
    flat = weight.detach().reshape(-1)
    levels = _table(quant_type, flat.device)
    blocks = -(-flat.numel() // BLOCKSIZE)
    # The results first, then a slice at a time: bounded temporaries, freed in order.
    packed = torch.empty(blocks * BLOCKSIZE // 2, dtype=torch.uint8, device=flat.device)
    absmax = torch.empty(blocks, dtype=torch.float32, device=flat.device)
    step = QUANTIZE_ELEMENTS // BLOCKSIZE * BLOCKSIZE
    for start in range(0, flat.numel(), step):
        chunk, scale = _blocks_absmax(flat[start:start + step].float(), BLOCKSIZE)
        codes = nearest_level(_scaled(chunk, scale), levels).view(-1, 2)
        first = start // BLOCKSIZE
        absmax[first:first + scale.numel()] = scale
        torch.bitwise_or(codes[:, 0] << 4, codes[:, 1],
                         out=packed[first * BLOCKSIZE // 2:(first + scale.numel()) * BLOCKSIZE // 2])
    return packed, absmax


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, quant_type: str = "nf4",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The flat values of whole blocks: each code's level times its block's absmax."""
    pairs = _table(f"{quant_type}-pairs", packed.device)
    values = pairs.index_select(0, packed.view(torch.uint8).int()).view(torch.float32)
    values = values.view(-1, BLOCKSIZE)
    return (values * absmax[:, None]).view(-1).to(dtype)


def quantize_blockwise_8bit(x: torch.Tensor, blocksize: int = NESTED_BLOCKSIZE
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 indices into the dynamic map, float32 absmax per block) of a flat tensor."""
    blocks, absmax = _blocks_absmax(x.reshape(-1).float(), blocksize)
    codes = nearest_level(_scaled(blocks, absmax), _table("dynamic", x.device))
    return codes.view(-1)[:x.numel()], absmax


def double_quantize(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """QLoRA's double quantisation of the absmax vector: (uint8 codes, float32 absmax per
    block of 256, float32 offset), the offset being the mean, subtracted first."""
    offset = absmax.mean()
    codes, nested = quantize_blockwise_8bit(absmax - offset)
    return codes, nested, offset


def double_dequantize(codes: torch.Tensor, nested: torch.Tensor, offset: torch.Tensor,
                      start: int = 0) -> torch.Tensor:
    """The absmax values of `codes` (the slice of the vector from `start`)."""
    first = start // NESTED_BLOCKSIZE
    last = -(-(start + codes.numel()) // NESTED_BLOCKSIZE)
    skip = start - first * NESTED_BLOCKSIZE
    scale = nested[first:last].repeat_interleave(NESTED_BLOCKSIZE)[skip:skip + codes.numel()]
    levels = _table("dynamic", codes.device).index_select(0, codes.int())
    return levels.mul_(scale).add_(offset)


def quantize_int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 absmax per row): q = round(w * 127 / absmax)."""
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)
    scale = 127 / torch.where(absmax > 0, absmax, 1.0)
    return torch.round(w * scale[:, None]).clamp_(-127, 127).to(torch.int8), absmax


def dequantize_int8_rows(q: torch.Tensor, absmax: torch.Tensor,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q * (absmax / 127), row by row."""
    return (q.float() * (absmax / 127)[:, None]).to(dtype)


# -- the layers ------------------------------------------------------------------------------

class _Dequantized(torch.autograd.Function):
    """x @ W.T with W dequantised for the product, in the forward and again in the backward:
    autograd keeps only the packed weight, never a float copy (the weight gets no gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: _QuantizedLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer._product(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.layer._product_transposed(grad), None


class _QuantizedLinear(nn.Module):
    """What Linear4bit and Linear8bitLt share: the row slices, the products, the buffers'
    dtypes kept through .to()/.half(), and no `weight` attribute."""

    in_features: int
    out_features: int

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 device: torch.device | str | None) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, not "
                             f"{in_features} and {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.bias = (nn.Parameter(torch.zeros(out_features, device=device)) if bias
                     else None)
        # Set when the layer replaced a GPT-2 Conv1D: its weight is saved [in, out] again.
        self.conv1d_layout = False

    def __getattr__(self, name: str) -> Any:
        if name == "weight":
            raise AttributeError(
                f"{type(self).__name__} keeps its weight quantised (qweight + absmax), so it "
                "has no `weight`: call dequantize() for the float weight, quantize_(w) to "
                "store a new one.")
        return super().__getattr__(name)

    def _apply(self, fn, recurse: bool = True):
        # .half()/.to(dtype) must not convert the codes and scales (a float quant_storage or
        # the float32 absmax would be corrupted); moving them between devices is fine.
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def _slices(self) -> list[tuple[int, int]]:
        step = max(1, CHUNK_ELEMENTS // self.in_features)
        return [(r, min(r + step, self.out_features)) for r in range(0, self.out_features, step)]

    # Each layer defines _rows(start, stop, dtype): those rows of the weight, dequantised.

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    **kwargs: Any) -> _QuantizedLinear:
        """A layer of this class holding `weight` [out, in] quantised (kwargs: as the
        constructor)."""
        # Built on the meta device: no placeholder buffers to allocate and free first.
        layer = cls(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta",
                    **kwargs)
        layer.quantize_(weight)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [out_features, in_features] (a new tensor)."""
        parts = [self._rows(a, b, dtype) for a, b in self._slices()]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        parts = [F.linear(x, self._rows(a, b, x.dtype)) for a, b in self._slices()]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _product_transposed(self, grad: torch.Tensor) -> torch.Tensor:
        out = None
        for a, b in self._slices():
            part = grad[..., a:b] @ self._rows(a, b, grad.dtype)
            out = part if out is None else out.add_(part)
        return out

    def _check_weight(self, weight: torch.Tensor) -> None:
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"{type(self).__name__}.quantize_: weight of shape "
                             f"{tuple(weight.shape)}, expected ({self.out_features}, "
                             f"{self.in_features})")
        if not weight.is_floating_point():
            raise ValueError(f"{type(self).__name__}.quantize_: the weight must be floating "
                             f"point, not {weight.dtype}")

    def _on_device(self, weight: torch.Tensor) -> torch.Tensor:
        return weight if self.qweight.is_meta else weight.to(self.qweight.device)

    def _add_bias(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.bias is None else out + self.bias.to(out.dtype)


class Linear4bit(_QuantizedLinear):
    """A linear layer with its weight in 4 bits (NF4 or FP4, blocks of 64), optionally with
    double-quantised scales; bitsandbytes' name and constructor arguments."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 compute_dtype: torch.dtype | None = None, compress_statistics: bool = True,
                 quant_type: str = "fp4", quant_storage: torch.dtype = torch.uint8,
                 device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, device)
        if quant_type not in CODES:
            raise ValueError(f"quant_type={quant_type!r}: use 'nf4' or 'fp4'.")
        self.compute_dtype, self.quant_type = compute_dtype, quant_type
        self.compress_statistics, self.quant_storage = compress_statistics, quant_storage
        blocks = math.ceil(in_features * out_features / BLOCKSIZE)
        nbytes = blocks * BLOCKSIZE // 2
        itemsize = torch.empty((), dtype=quant_storage).element_size()
        if nbytes % itemsize:
            raise ValueError(f"quant_storage {quant_storage} does not divide the packed "
                             f"weight's {nbytes} bytes")
        self.register_buffer("qweight", torch.zeros(nbytes, dtype=torch.uint8, device=device)
                             .view(quant_storage))
        if compress_statistics:
            self.register_buffer("absmax", torch.zeros(blocks, dtype=torch.uint8,
                                                       device=device))
            self.register_buffer("nested_absmax", torch.zeros(
                math.ceil(blocks / NESTED_BLOCKSIZE), device=device))
            self.register_buffer("nested_offset", torch.zeros((), device=device))
        else:
            self.register_buffer("absmax", torch.zeros(blocks, device=device))

    @torch.no_grad()
    def quantize_(self, weight: torch.Tensor) -> None:
        """Store the quantisation of a float weight [out, in] (replacing the current one), on
        the layer's device (the weight's, for a layer built on the meta device)."""
        self._check_weight(weight)
        packed, absmax = quantize_4bit(self._on_device(weight), self.quant_type)
        self.qweight = packed.view(self.quant_storage)
        if self.compress_statistics:
            self.absmax, self.nested_absmax, self.nested_offset = double_quantize(absmax)
        else:
            self.absmax = absmax

    def _block_absmax(self, start: int, stop: int) -> torch.Tensor:
        if not self.compress_statistics:
            return self.absmax[start:stop]
        return double_dequantize(self.absmax[start:stop], self.nested_absmax,
                                 self.nested_offset, start)

    def _rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        first, last = start * self.in_features, stop * self.in_features
        b0, b1 = first // BLOCKSIZE, -(-last // BLOCKSIZE)
        packed = self.qweight.view(torch.uint8)[b0 * BLOCKSIZE // 2:b1 * BLOCKSIZE // 2]
        flat = dequantize_4bit(packed, self._block_absmax(b0, b1), self.quant_type, dtype)
        return flat[first - b0 * BLOCKSIZE:last - b0 * BLOCKSIZE].view(stop - start, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.compute_dtype or x.dtype)
        bnb = _bitsandbytes() if h.is_cuda else None
        if bnb is not None:
            out = bnb.matmul_4bit(h, self._bnb_weight().t(), quant_state=self._bnb_state(bnb,
                                                                                       h.dtype))
        else:
            out = _Dequantized.apply(h, self)
        return self._add_bias(out).to(x.dtype)

    def _bnb_weight(self) -> torch.Tensor:
        # bitsandbytes reads the same bytes; it wants them as a column of the storage dtype.
        return self.qweight.view(-1, 1)

    def _bnb_state(self, bnb: Any, dtype: torch.dtype) -> Any:
        """bitsandbytes' QuantState over this layer's buffers (no copy)."""
        state = bnb.functional.QuantState
        code = _table(self.quant_type, self.qweight.device)
        shape = torch.Size((self.out_features, self.in_features))
        if not self.compress_statistics:
            return state(absmax=self.absmax, shape=shape, code=code, blocksize=BLOCKSIZE,
                         quant_type=self.quant_type, dtype=dtype)
        nested = state(absmax=self.nested_absmax, code=_table("dynamic", code.device),
                       blocksize=NESTED_BLOCKSIZE, dtype=torch.float32)
        return state(absmax=self.absmax, shape=shape, code=code, blocksize=BLOCKSIZE,
                     quant_type=self.quant_type, dtype=dtype, offset=self.nested_offset,
                     state2=nested)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, quant_type={self.quant_type}, "
                f"double_quant={self.compress_statistics}, compute_dtype={self.compute_dtype}")


class Linear8bitLt(_QuantizedLinear):
    """A linear layer with its weight in int8, one absmax scale per output row (LLM.int8's
    storage; no outlier decomposition, see the module's docstring); bitsandbytes' name.
    Computes in the input's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 threshold: float = 6.0, device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, device)
        self.threshold = threshold  # kept for bitsandbytes' signature; see the docstring
        self.register_buffer("qweight", torch.zeros(out_features, in_features,
                                                    dtype=torch.int8, device=device))
        self.register_buffer("absmax", torch.zeros(out_features, device=device))

    @torch.no_grad()
    def quantize_(self, weight: torch.Tensor) -> None:
        """Store the quantisation of a float weight [out, in] (replacing the current one), on
        the layer's device (the weight's, for a layer built on the meta device)."""
        self._check_weight(weight)
        self.qweight, self.absmax = quantize_int8_rows(self._on_device(weight))

    def _rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_int8_rows(self.qweight[start:stop], self.absmax[start:stop], dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._add_bias(_Dequantized.apply(x, self))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def _bitsandbytes() -> Any:
    """bitsandbytes when it is installed and imports (it is optional), else None."""
    global _BNB
    if _BNB is _UNSET:
        try:
            import bitsandbytes
        except Exception:  # absent, or present without a usable CUDA library
            bitsandbytes = None
        _BNB = bitsandbytes
    return _BNB


_UNSET = object()
_BNB: Any = _UNSET


# -- models ----------------------------------------------------------------------------------

def _linear_weight(module: nn.Module) -> torch.Tensor | None:
    """The [out, in] weight of an nn.Linear or a GPT-2 Conv1D; None for other modules."""
    from cove.models.gpt2 import Conv1D

    if type(module) is nn.Linear:
        return module.weight
    if type(module) is Conv1D:
        return module.weight.t()
    return None


def _matches(name: str, pattern: str) -> bool:
    """A skip pattern is a run of the module's dotted name ("lm_head", "mlp", "layers.0" or
    the full name: the module or one of its parents), or a regular expression matching its
    name from the start up to a '.' boundary."""
    if f".{pattern}." in f".{name}.":
        return True
    try:
        return re.match(rf"(?:{pattern})(?:\.|$)", name) is not None
    except re.error as e:
        raise ValueError(f"llm_int8_skip_modules entry {pattern!r} is neither a module name "
                         f"nor a valid regular expression: {e}") from None


def modules_to_quantize(model: nn.Module, config: BitsAndBytesConfig) -> list[str]:
    """The names of the linear layers `config` quantises in `model`.

    Kept in float, as transformers does: with no llm_int8_skip_modules, the output
    embeddings (lm_head) and the module of the model's last parameter (a classifier head);
    else the modules listed. Always (also with a list): modules whose weights are tied, since
    quantising one would break the tie."""
    skip: list[str] = list(config.llm_int8_skip_modules or [])
    if config.llm_int8_skip_modules is None:
        output = getattr(model, "get_output_embeddings", lambda: None)()
        skip += [n for n, m in model.named_modules() if output is not None and m is output]
        last = list(model.named_parameters())
        if last:
            skip.append(last[-1][0].rpartition(".")[0])
    ties = getattr(model, "active_ties", dict)()
    skip += [n.rpartition(".")[0] for pair in ties.items() for n in pair]
    skip = [s for s in skip if s]
    return [name for name, module in model.named_modules()
            if name and _linear_weight(module) is not None
            and not any(_matches(name, p) for p in skip)]


def quantize_model(model: nn.Module, config: BitsAndBytesConfig,
                   names: list[str] | None = None, release_float: bool = False) -> list[str]:
    """Replace the linear layers `names` (default: modules_to_quantize) by quantised ones, in
    place; returns the names. Marks the model as transformers does (is_loaded_in_4bit/8bit,
    is_quantized, quantization_config). `release_float`: the float weights are views into a
    memory-mapped checkpoint, whose pages are handed back to the kernel once quantised."""
    if not (config.load_in_4bit or config.load_in_8bit):
        raise ValueError("quantization_config quantises nothing: set load_in_4bit=True or "
                         "load_in_8bit=True.")
    names = modules_to_quantize(model, config) if names is None else names
    for name in names:
        module = model.get_submodule(name)
        weight = _linear_weight(module)
        if weight is None:
            raise ValueError(f"{name} is a {type(module).__name__}, not a linear layer: only "
                             "nn.Linear (and GPT-2's Conv1D) can be quantised.")
        bias = getattr(module, "bias", None)
        if config.load_in_4bit:
            layer = Linear4bit.from_weight(
                weight, bias, compute_dtype=config.bnb_4bit_compute_dtype,
                compress_statistics=config.bnb_4bit_use_double_quant,
                quant_type=config.bnb_4bit_quant_type,
                quant_storage=config.bnb_4bit_quant_storage)
        else:
            layer = Linear8bitLt.from_weight(weight, bias, threshold=config.llm_int8_threshold)
        layer.conv1d_layout = type(module) is not nn.Linear
        if release_float:
            _page_out(module.weight)
        layer.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    model.is_loaded_in_4bit, model.is_loaded_in_8bit = config.load_in_4bit, config.load_in_8bit
    model.is_quantized = True
    model.quantization_config = config
    return names


_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now (file pages are re-read if touched)


def _page_out(tensor: torch.Tensor) -> None:
    """Drop a CPU tensor's resident pages from this process (the whole pages it spans alone).

    For a weight read from a memory-mapped checkpoint, the pages read while quantising it
    would otherwise stay resident until the mapping closes: with them, loading in 4 bits
    would peak as high as loading in float. MADV_PAGEOUT loses nothing (a page touched again
    is read back from the file, or from swap); where the kernel lacks it, nothing happens.
    """
    if tensor.device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    page = mmap.PAGESIZE
    start = -(-tensor.data_ptr() // page) * page
    stop = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
    if stop > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), _MADV_PAGEOUT)


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def dequantized_state(model: nn.Module, state: dict[str, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """A state dict with every quantised layer's codes and scales replaced by its float
    weight (in the model's dtype): what save_pretrained writes for a quantised model."""
    from cove.models.weight_only import WEIGHT_ONLY_LAYERS, Int8Embedding

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                 torch.float32)
    state = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, (_QuantizedLinear, *WEIGHT_ONLY_LAYERS, Int8Embedding)):
            for key in module._buffers:
                state.pop(f"{name}.{key}", None)
            weight = module.dequantize(dtype)
            if getattr(module, "conv1d_layout", False):
                weight = weight.t().contiguous()
            state[f"{name}.weight"] = weight
    log.warning("Saving a quantised %s: its quantised layers are written dequantised to %s "
                "(a float checkpoint without quantization_config; load it with "
                "quantization_config= to quantise it again).", type(model).__name__,
                str(dtype).removeprefix("torch."))
    return state


# -- training on a quantised base (peft's function) -------------------------------------------

def prepare_model_for_kbit_training(model: nn.Module, use_gradient_checkpointing: bool = True,
                                    gradient_checkpointing_kwargs: dict[str, Any] | None = None
                                    ) -> nn.Module:
    """peft's preparation of a quantised model for adapter training, in place: freezes every
    parameter, casts float16/bfloat16 parameters (norms, embeddings, biases; the quantised
    weights are buffers and stay as they are) to float32, makes the input embeddings' output
    require grad (so gradients reach adapters through checkpointed layers) and, with
    `use_gradient_checkpointing`, turns on the model's gradient checkpointing
    (`gradient_checkpointing_kwargs` passed on). Returns the model."""
    for param in model.parameters():
        param.requires_grad_(False)
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    _require_input_grads(model)
    if use_gradient_checkpointing:
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if not callable(enable):
            raise ValueError(f"{type(model).__name__} has no gradient_checkpointing_enable(): "
                             "pass use_gradient_checkpointing=False.")
        enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
    return model


def _require_input_grads(model: nn.Module) -> None:
    if callable(getattr(model, "enable_input_require_grads", None)):
        model.enable_input_require_grads()
        return
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if embeddings is None:
        raise ValueError(f"{type(model).__name__} has no get_input_embeddings(): cannot make "
                         "its inputs require grad for kbit training.")
    if getattr(model, "_require_grads_hook", None) is None:
        model._require_grads_hook = embeddings.register_forward_hook(
            lambda _module, _inputs, output: output.requires_grad_(True))
