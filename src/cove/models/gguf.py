"""GGUF (llama.cpp) files to Hugging Face folders: config.json, safetensors, tokenizer.

    from cove.models.gguf import convert_gguf

    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "./smollm2")   # loadable by transformers

The `gguf` package parses the file (header, metadata, tensor table); dequantisation, tensor
names, the configuration and the tokenizer are ours:

- Weights: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K are
  dequantised block by block with vectorised numpy, in float32 as ggml does, then cast to the
  dtype asked for (float32 by default). llama.cpp stores the Q and K projections of the Llama
  architecture with each head's rows interleaved (for its rotary kernel); that is undone.
- Architectures: llama (Mistral too, which llama.cpp converts as llama), qwen2, qwen3.
- Tokenizer: the vocabulary, merges and token types of `tokenizer.ggml.*` become a
  tokenizer.json: byte-level BPE for `gpt2` models (with the pre-tokenizer `tokenizer.ggml.pre`
  names, as llama.cpp splits), SentencePiece-style BPE with byte fallback for `llama` models
  (merges rebuilt from the token scores). Control tokens become special added tokens; the
  chat template and bos/eos/unk/pad go to tokenizer_config.json.

The output folder is written under a temporary name and renamed into place, so it is either
complete or absent. `load_gguf` converts into a cache folder once (keyed by the file) for
`from_pretrained(..., gguf_file=...)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cove import kernels
from cove.models.checkpoint import save_weights

log = logging.getLogger("cove.models")

GGUF_MAGIC = b"GGUF"
GENERATION_CONFIG = "generation_config.json"


class GGUFError(ValueError):
    """A GGUF file that cannot be converted: says which file and what is wrong with it."""


# -- dequantisation -------------------------------------------------------------------------
# ggml type id -> (name, elements per block, bytes per block). Ids are ggml's (ggml.h).
QUANT_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    30: ("BF16", 1, 2),
}


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of each block, as a float32 column."""
    return blocks[:, start:start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 4-bit layout: the low nibbles are the first half of the block, the high the rest."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray, count: int) -> np.ndarray:
    """`count` bits of a little-endian uint32 per block, bit j as column j."""
    bits = qh.copy().view("<u4")  # [n, 1]
    return ((bits >> np.arange(count, dtype=np.uint32)) & 1).astype(np.uint8)


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    return blocks[:, 2:].view(np.int8).astype(np.float32) * _f16(blocks, 0)


def _q4_0(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
    return q.astype(np.float32) * _f16(blocks, 0)


def _q4_1(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks[:, 4:]).astype(np.float32)
    return q * _f16(blocks, 0) + _f16(blocks, 2)


def _q5(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The 5-bit values of Q5_0 / Q5_1: 4 bits in qs, the fifth in the 32-bit qh."""
    return _nibbles(blocks[:, offset + 4:]) | (_high_bits(blocks[:, offset:offset + 4], 32) << 4)


def _q5_0(blocks: np.ndarray) -> np.ndarray:
    q = _q5(blocks, 2).astype(np.int8) - np.int8(16)
    return q.astype(np.float32) * _f16(blocks, 0)


def _q5_1(blocks: np.ndarray) -> np.ndarray:
    return _q5(blocks, 4).astype(np.float32) * _f16(blocks, 0) + _f16(blocks, 2)


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and mins packed in 12 bytes (Q4_K, Q5_K): [n, 8] each."""
    low, mid, high = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([low & 63, (high & 0x0F) | ((low >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (high >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _k_quant_4bit(qs: np.ndarray) -> np.ndarray:
    """128 bytes -> 8 sub-blocks of 32: each 32-byte run gives two (low, then high nibbles)."""
    runs = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([runs & 0x0F, runs >> 4], axis=2).reshape(-1, 8, 32)


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scales(blocks[:, 4:16])
    q = _k_quant_4bit(blocks[:, 16:144]).astype(np.float32)
    y = (d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]
    return y.reshape(-1, 256)


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scales(blocks[:, 4:16])
    qh = blocks[:, 16:48]  # bit j of byte l is the fifth bit of sub-block j, position l
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = (_k_quant_4bit(blocks[:, 48:176]) | (high << 4)).astype(np.float32)
    y = (d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]
    return y.reshape(-1, 256)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    ql = blocks[:, 0:128].reshape(-1, 2, 2, 32)  # [half, first/second 32 bytes, l]
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(blocks, 208)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # [half, quarter, l]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]
    q = (low | (((qh >> shifts) & 3) << 4)).astype(np.int8) - np.int8(32)
    # scale index within a half: 2 * quarter + l // 16
    y = (d[:, :, None, None] * scales.reshape(-1, 2, 4, 2))[..., None] \
        * q.astype(np.float32).reshape(-1, 2, 4, 2, 16)
    return y.reshape(-1, 256)


_DEQUANTIZE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}


def quant_type_name(type_id: int) -> str:
    entry = QUANT_TYPES.get(int(type_id))
    if entry is not None:
        return entry[0]
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(int(type_id)).name
    except (ImportError, ValueError):
        return f"type {int(type_id)}"


def dequantize(raw: np.ndarray | bytes, type_id: int, shape: Iterable[int]) -> np.ndarray:
    """float32 values of a ggml tensor's bytes; `shape` is the row-major (PyTorch) shape."""
    shape = tuple(int(s) for s in shape)
    entry = QUANT_TYPES.get(int(type_id))
    if entry is None:
        supported = ", ".join(name for name, _, _ in QUANT_TYPES.values())
        raise GGUFError(f"unsupported tensor type {quant_type_name(type_id)} "
                        f"(Cove converts {supported})")
    name, block_elems, block_bytes = entry
    data = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes) \
        else np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    count = int(np.prod(shape, dtype=np.int64))
    if (shape[-1] if shape else 1) % block_elems:
        raise GGUFError(f"{name} rows of {shape[-1]} values are not whole blocks of "
                        f"{block_elems}")
    expected = count // block_elems * block_bytes
    if data.size != expected:
        raise GGUFError(f"{name} tensor of shape {list(shape)} needs {expected} bytes, "
                        f"found {data.size}")
    if name == "F32":
        out = data.view("<f4").astype(np.float32)
    elif name == "F16":
        out = data.view("<f2").astype(np.float32)
    elif name == "BF16":
        out = (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        out = _DEQUANTIZE[name](data.reshape(-1, block_bytes))
    return out.reshape(shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: within each head it interleaves the two rotary halves.

    llama.cpp's converter does reshape(n_head, 2, rows_per_head // 2, ...).swapaxes(1, 2);
    this is its inverse. Works for weights [rows, in] and biases [rows].
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise GGUFError(f"cannot split {rows} rows into {n_head} heads of rotary pairs")
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# -- reading --------------------------------------------------------------------------------
class GGUFFile:
    """A parsed GGUF file: metadata as Python values, and the tensor table."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"{self.path} is not a file")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            what = "it is empty" if size == 0 else f"it starts with {magic!r}, not {GGUF_MAGIC!r}"
            raise GGUFError(f"{self.path} is not a GGUF file: {what}")
        try:
            from gguf import GGUFReader
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ImportError("Reading GGUF files needs the `gguf` package: "
                              "pip install gguf") from e
        try:
            reader = GGUFReader(self.path)
        except Exception as e:  # numpy raises many kinds on a cut-off file
            raise GGUFError(f"{self.path} is not a valid GGUF file (truncated or corrupt): "
                            f"{type(e).__name__}: {e}") from None
        if reader.byte_order != "I":
            raise GGUFError(f"{self.path} is a big-endian GGUF file; Cove reads little-endian "
                            "files only")
        self.reader = reader
        self.metadata: dict[str, Any] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                self.metadata[key] = field.contents()
            except Exception as e:
                raise GGUFError(f"{self.path}: cannot read metadata {key!r}: {e}") from None
        for t in reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise GGUFError(f"{self.path} is truncated: tensor {t.name} ends at byte {end}, "
                                f"the file has {size}")
        self.tensors = {t.name: t for t in reader.tensors}

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def tensor(self, name: str) -> np.ndarray:
        """A tensor dequantised to float32, in PyTorch's (row-major) shape."""
        t = self.tensors[name]
        shape = tuple(int(s) for s in reversed(list(t.shape)))
        try:
            return dequantize(np.asarray(t.data), int(t.tensor_type), shape)
        except GGUFError as e:
            raise GGUFError(f"{self.path}: tensor {name}: {e}") from None


# -- configuration --------------------------------------------------------------------------
ARCHITECTURES = {
    # GGUF architecture -> (model_type, class name, Q/K rows permuted by llama.cpp)
    "llama": ("llama", "LlamaForCausalLM", True),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", False),
}

_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                   "output": "lm_head"}
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_SKIPPED_TENSORS = {"rope_freqs.weight"}


def hf_tensor_name(name: str) -> str | None:
    """transformers' name for a llama.cpp tensor name (None: not a tensor Cove knows)."""
    base, dot, suffix = name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        return None
    if base in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[base]}.{suffix}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in _LAYER_TENSORS:
        return f"model.layers.{int(m.group(1))}.{_LAYER_TENSORS[m.group(2)]}.{suffix}"
    return None


def _short_float(value: float) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def _scalar(gguf: GGUFFile, key: str, what: str) -> Any:
    value = gguf.get(key)
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise GGUFError(f"{gguf.path}: {key} differs between layers ({what}); Cove "
                            "converts models whose layers all have the same shape")
        value = value[0]
    return value


def build_config(gguf: GGUFFile, dtype: str = "float32") -> dict[str, Any]:
    """config.json for the file's architecture."""
    arch = gguf.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{gguf.path}: architecture {arch!r} is not supported (Cove converts "
                        f"{', '.join(sorted(ARCHITECTURES))})")
    model_type, class_name, _ = ARCHITECTURES[arch]

    def need(key: str) -> Any:
        value = _scalar(gguf, f"{arch}.{key}", key)
        if value is None:
            raise GGUFError(f"{gguf.path}: metadata {arch}.{key} is missing")
        return value

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    kv_heads = int(_scalar(gguf, f"{arch}.attention.head_count_kv", "kv heads") or heads)
    head_dim = int(_scalar(gguf, f"{arch}.attention.key_length", "head size")
                   or hidden // heads)
    theta = _short_float(float(gguf.get(f"{arch}.rope.freq_base", 10000.0)))
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    scaling = gguf.get(f"{arch}.rope.scaling.type")
    factor = gguf.get(f"{arch}.rope.scaling.factor")
    if scaling in ("linear", "yarn") and factor:
        rope.update(rope_type=scaling, factor=_short_float(float(factor)))
        original = gguf.get(f"{arch}.rope.scaling.original_context_length")
        if original:
            rope["original_max_position_embeddings"] = int(original)
    elif scaling not in (None, "none"):
        log.warning("%s: rope scaling %r is not carried over to config.json", gguf.path, scaling)
    embed = gguf.tensors.get("token_embd.weight")
    vocab_size = int(embed.shape[1]) if embed is not None and len(embed.shape) == 2 \
        else len(gguf.get("tokenizer.ggml.tokens") or [])
    config: dict[str, Any] = {
        "architectures": [class_name],
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(gguf.get(f"{arch}.context_length", 2048)),
        "rms_norm_eps": _short_float(float(need("attention.layer_norm_rms_epsilon"))),
        "rope_theta": theta,
        "rope_parameters": rope,
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "use_cache": True,
        "dtype": dtype,
    }
    if model_type in ("llama", "qwen3"):
        config["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
    if model_type == "llama":
        config["mlp_bias"] = "blk.0.ffn_up.bias" in gguf.tensors
        config["pretraining_tp"] = 1
    if model_type in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
        config["sliding_window"] = None
    for key, meta in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("pad_token_id", "padding_token_id")):
        value = gguf.get(f"tokenizer.ggml.{meta}")
        config[key] = None if value is None else int(value)
    return config


def generation_config(config: dict[str, Any], gguf: GGUFFile) -> dict[str, Any]:
    eos = config.get("eos_token_id")
    eot = gguf.get("tokenizer.ggml.eot_token_id")
    if eot is not None and eos is not None and int(eot) != eos:
        eos = [eos, int(eot)]
    out = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": eos}
    if config.get("pad_token_id") is not None:
        out["pad_token_id"] = config["pad_token_id"]
    out["transformers_version"] = "5.0.0"
    return out


# -- weights --------------------------------------------------------------------------------
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype_name(dtype: str | torch.dtype | None) -> str:
    if dtype is None or dtype == "auto":
        return "float32"
    name = str(dtype).removeprefix("torch.")
    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
    if name not in _TORCH_DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}: use float32, bfloat16 or float16.")
    return name


def convert_weights(gguf: GGUFFile, config: dict[str, Any],
                    dtype: str = "float32") -> dict[str, torch.Tensor]:
    """The model's tensors under transformers' names, dequantised, Q/K rows restored."""
    arch = gguf.get("general.architecture")
    permuted = ARCHITECTURES[arch][2]
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    target = _TORCH_DTYPES[dtype]
    state: dict[str, torch.Tensor] = {}
    for name in gguf.tensors:
        if name in _SKIPPED_TENSORS:
            log.warning("%s: %s is not carried over (Llama 3 long-context rope scaling): outputs "
                        "for positions past the original context may differ", gguf.path, name)
            continue
        hf_name = hf_tensor_name(name)
        if hf_name is None:
            raise GGUFError(f"{gguf.path}: tensor {name!r} has no counterpart in a "
                            f"{config['architectures'][0]}; the file is not a plain {arch} model")
        values = gguf.tensor(name)
        part = name.split(".")[-2]
        if permuted and part in heads:
            values = unpermute_rows(values, heads[part])
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(values)).to(target)
    return state


# -- tokenizer ------------------------------------------------------------------------------
# llama.cpp's token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2_REGEX = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                 r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> how llama.cpp splits text before BPE (llama-vocab.cpp's regex_exprs)
_PRE_GPT2 = {"default", "gpt-2", "gpt2", "mpt", "olmo", "jais"}
_PRE_DIGITS = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_PRE_LLAMA3 = {"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"}
_PRE_QWEN2 = {"qwen2", "deepseek-r1-qwen", "megrez", "hunyuan"}


def _byte_level_pipeline(pre: str | None, path: Path):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raw_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre is None or pre in _PRE_GPT2:
        return None, byte_level
    if pre in _PRE_DIGITS:
        return None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                              byte_level])
    if pre in _PRE_LLAMA3:
        split = pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False)
        return None, pre_tokenizers.Sequence([split, raw_bytes])
    if pre in _PRE_QWEN2:  # no NFC: llama.cpp does not normalise
        split = pre_tokenizers.Split(Regex(_QWEN2_REGEX), behavior="isolated", invert=False)
        return None, pre_tokenizers.Sequence([split, raw_bytes])
    log.warning("%s: pre-tokenizer %r is not known to Cove; using GPT-2's split", path, pre)
    return None, byte_level


def spm_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges that replay SentencePiece's BPE: a pair of pieces merges when their
    concatenation is a piece, pieces with higher scores first."""
    found = []
    for piece, index in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                found.append((-scores[index], index, vocab[left], vocab[right], left, right))
    found.sort(key=lambda m: m[:4])
    return [(left, right) for *_, left, right in found]


def build_tokenizer(gguf: GGUFFile) -> tuple[Any, dict[str, Any]] | None:
    """The `tokenizers.Tokenizer` and the tokenizer_config.json of the file's vocabulary
    (None when the file has no tokenizer Cove can rebuild)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    kind = gguf.get("tokenizer.ggml.model")
    tokens = gguf.get("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        log.warning("%s has no tokenizer; writing the model only", gguf.path)
        return None
    if kind not in ("gpt2", "llama"):
        log.warning("%s: tokenizer model %r is not supported (Cove rebuilds 'gpt2' and "
                    "'llama' vocabularies); writing the model only", gguf.path, kind)
        return None
    tokens = [str(t) for t in tokens]
    types = [int(t) for t in gguf.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)]
    if len(types) != len(tokens):
        raise GGUFError(f"{gguf.path}: {len(tokens)} tokens but {len(types)} token types")
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if token in vocab:
            log.warning("%s: token %r appears twice (ids %d and %d); text never encodes to "
                        "the second", gguf.path, token, vocab[token], index)
            continue
        vocab[token] = index

    def token_of(key: str) -> str | None:
        value = gguf.get(f"tokenizer.ggml.{key}")
        if value is None:
            return None
        if not 0 <= int(value) < len(tokens):
            raise GGUFError(f"{gguf.path}: tokenizer.ggml.{key} = {value} is not a token id")
        return tokens[int(value)]

    bos, eos, unk, pad = (token_of(k) for k in ("bos_token_id", "eos_token_id",
                                                 "unknown_token_id", "padding_token_id"))
    add_bos = bool(gguf.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(gguf.get("tokenizer.ggml.add_eos_token", False))

    if kind == "gpt2":
        merges = gguf.get("tokenizer.ggml.merges") or []
        pairs = []
        for merge in merges:
            left, sep, right = str(merge).partition(" ")
            if not sep:
                raise GGUFError(f"{gguf.path}: merge {merge!r} is not two tokens")
            pairs.append((left, right))
        pre = gguf.get("tokenizer.ggml.pre")
        model = models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False,
                           ignore_merges=pre in _PRE_LLAMA3)
        tokenizer = Tokenizer(model)
        normalizer, pre_tokenizer = _byte_level_pipeline(pre, gguf.path)
        if normalizer is not None:
            tokenizer.normalizer = normalizer
        tokenizer.pre_tokenizer = pre_tokenizer
        tokenizer.decoder = decoders.ByteLevel()
    else:
        scores = [float(s) for s in gguf.get("tokenizer.ggml.scores") or [0.0] * len(tokens)]
        if len(scores) != len(tokens):
            raise GGUFError(f"{gguf.path}: {len(tokens)} tokens but {len(scores)} scores")
        pieces = {t: i for t, i in vocab.items() if types[i] == NORMAL}
        byte_fallback = BYTE in types
        model = models.BPE(vocab, spm_merges(pieces, scores), unk_token=unk, fuse_unk=True,
                           byte_fallback=byte_fallback)
        tokenizer = Tokenizer(model)
        space_prefix = bool(gguf.get("tokenizer.ggml.add_space_prefix", True))
        steps = [normalizers.Prepend("▁")] if space_prefix else []
        tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
        decode = [decoders.Replace("▁", " ")]
        if byte_fallback:
            decode.append(decoders.ByteFallback())
        decode.append(decoders.Fuse())
        if space_prefix:
            decode.append(decoders.Strip(content=" ", left=1, right=0))
        tokenizer.decoder = decoders.Sequence(decode)

    added: dict[int, dict[str, Any]] = {}
    for index, (token, kind_) in enumerate(zip(tokens, types, strict=True)):
        if kind_ in (CONTROL, UNKNOWN, USER_DEFINED) and vocab.get(token) == index:
            special = kind_ != USER_DEFINED
            added[index] = {"content": token, "lstrip": False, "normalized": False,
                            "rstrip": False, "single_word": False, "special": special}
    # add_tokens takes the vocabulary's id for a token it already has: all but duplicates
    tokenizer.add_tokens([AddedToken(**e) for i, e in sorted(added.items())])

    single = ([f"{bos}:0"] if add_bos and bos else []) + ["$A:0"] \
        + ([f"{eos}:0"] if add_eos and eos else [])
    pair = single + [s.replace(":0", ":1").replace("$A", "$B") for s in single]
    specials = {t: vocab[t] for t in (bos if add_bos else None, eos if add_eos else None) if t}
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=list(specials.items()))

    arch = gguf.get("general.architecture")
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(i): e for i, e in sorted(added.items())},
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": pad,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(gguf.get(f"{arch}.context_length", 2048)),
    }
    if kind == "llama":
        config["legacy"] = True
    template = gguf.get("tokenizer.chat_template")
    named = {str(n): gguf.get(f"tokenizer.chat_template.{n}")
             for n in gguf.get("tokenizer.chat_templates") or []}
    named = {n: t for n, t in named.items() if t}
    if template and named:
        config["chat_template"] = [{"name": "default", "template": template}] + [
            {"name": n, "template": t} for n, t in named.items()]
    elif template:
        config["chat_template"] = template
    return tokenizer, config


# -- conversion -----------------------------------------------------------------------------
def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def _write_folder(gguf: GGUFFile, folder: Path, dtype: str, weights: bool) -> None:
    config = build_config(gguf, dtype)
    built = build_tokenizer(gguf)
    if weights:
        state = convert_weights(gguf, config, dtype)
        missing = {"model.embed_tokens.weight", "model.norm.weight"} - set(state)
        if missing:
            raise GGUFError(f"{gguf.path} lacks {', '.join(sorted(missing))}")
        save_weights(state, folder)
        del state
    _write_json(folder / "config.json", config)
    _write_json(folder / GENERATION_CONFIG, generation_config(config, gguf))
    if built is not None:
        tokenizer, tokenizer_config = built
        tokenizer.save(str(folder / "tokenizer.json"))
        _write_json(folder / "tokenizer_config.json", tokenizer_config)
        special = {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token",
                                                    "pad_token") if tokenizer_config.get(k)}
        _write_json(folder / "special_tokens_map.json", special)


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished temp folder into place (replacing `out` only with overwrite)."""
    old = None
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True, or "
                                      "--overwrite, to replace it)")
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 dtype: str | torch.dtype = "float32", overwrite: bool = False,
                 weights: bool = True) -> Path:
    """Write a Hugging Face folder (config.json, generation_config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json) for a GGUF file; returns the folder.

    `dtype` is the weights' dtype (float32, bfloat16 or float16). The folder appears complete
    or not at all; an existing non-empty `out_dir` is replaced only with `overwrite=True`.
    `weights=False` writes the configuration and tokenizer only.
    """
    name = _dtype_name(dtype)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True, or "
                              "--overwrite, to replace it)")
    gguf = GGUFFile(gguf_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_folder(gguf, tmp, name, weights)
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cache_root() -> Path:
    """Where converted GGUF files are kept: COVE_GGUF_CACHE, else COVE_HOME/gguf."""
    value = os.environ.get("COVE_GGUF_CACHE")
    if value:
        return Path(value).expanduser()
    from cove.hub import config as hub_config

    return hub_config.home() / "gguf"


def _file_key(path: Path) -> str:
    """The file's identity: its sha256 when it is a Hub-cache blob (named by it), else a hash
    of its real path, size and modification time (no need to read gigabytes to key it)."""
    real = path.resolve()
    if re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name
    stat = real.stat()
    return hashlib.sha256(f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()


def load_gguf(name_or_path: str | os.PathLike, gguf_file: str, *,
              dtype: str | torch.dtype | None = None, weights: bool = True,
              **hub: Any) -> Path:
    """The converted folder of `gguf_file` in a folder or Hub repository, converting it into
    the cache on first use. `weights=False` is enough for a configuration or a tokenizer."""
    from cove.models.files import resolve_file

    path = resolve_file(name_or_path, gguf_file, required=True, **hub)
    key = _file_key(path)[:32]
    root = cache_root()
    name = _dtype_name(dtype if isinstance(dtype, (str, torch.dtype)) else None)
    full = root / f"{key}-{name}"
    if full.is_dir():
        return full
    if not weights:
        for other in sorted(root.glob(f"{key}-*")):
            if other.is_dir() and (other / "config.json").is_file():
                return other
        full = root / f"{key}-config"
    log.info("converting %s into %s", path, full)
    try:
        convert_gguf(path, full, dtype=name, weights=weights)
    except OSError:
        if not (full / "config.json").is_file():  # else another process finished it first
            raise
    return full


# -- kept quantised -------------------------------------------------------------------------
# from_pretrained(..., gguf_file=..., dtype="auto") builds the model straight from the file's
# blocks into cove.models.weight_only's layers, never holding a float copy of the weights:
# - Q4_0, Q4_1, Q4_K: exactly int4 in groups of 32 (w = (q - 8) * scale + zero): Q4_0 is
#   q * d - 8d (scale d, zero 0), Q4_1 q * d + m (zero m + 8d), Q4_K each 32-value sub-block's
#   q * (d * sc) - dmin * m (zero 8 * d * sc - dmin * m). The only rounding is of the scales
#   and zeros to bfloat16 (a relative 2^-9 of each, well under one 4-bit step).
# - Q8_0, Q5_0, Q5_1, Q5_K, Q6_K (and a 4-bit tensor whose rows are not a multiple of 16):
#   no CPU kernel takes their blocks, so they are dequantised a slice of rows at a time and
#   requantised to int8 with a scale per row: each value moves by at most half a step,
#   max|row| / 254, on top of the file's own rounding.
# - The token embedding becomes int8 rows (a scale per row) the same way; a tied output head
#   is the very same int8 rows (shared, not copied), as llama.cpp uses the embedding matrix.
# - F32 / F16 / BF16 tensors (norms, biases, float weights) load as float.
_INT4_EXACT = {"Q4_0", "Q4_1", "Q4_K"}
# GGUF metadata value types with a fixed size (struct format), by id; 8 is a string, 9 an array
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
          12: "d"}


class TensorInfo(NamedTuple):
    type_id: int
    shape: tuple[int, ...]  # row-major (PyTorch's)
    offset: int  # from the start of the file
    n_bytes: int


def tensor_table(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """The tensor table of a GGUF file, read straight from its header: the `gguf` package's
    reader decodes every metadata item into numpy views first (the vocabulary alone takes
    seconds), and the quantised loader needs none of it (the configuration comes from the
    cached folder)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        pos = 0

        def need(n: int) -> None:
            nonlocal head
            while pos + n > len(head):
                more = f.read(max(n, len(head)))
                if not more:
                    raise GGUFError(f"{path} is truncated in its header")
                head += more

        def take(fmt: str) -> Any:
            nonlocal pos
            size = struct.calcsize(fmt)
            need(size)
            value = struct.unpack_from(fmt, head, pos)
            pos += size
            return value[0] if len(value) == 1 else value

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            need(n)
            pos += n
            return head[pos - n:pos].decode("utf-8", "replace")

        def skip(kind: int) -> Any:
            nonlocal pos
            if kind in _FIXED:
                return take("<" + _FIXED[kind])
            if kind == 8:
                return string()
            if kind != 9:
                raise GGUFError(f"{path}: unknown metadata type {kind}")
            item, count = take("<IQ")
            if item in _FIXED:
                size = struct.calcsize(_FIXED[item]) * count
                need(size)
                pos += size
            else:
                for _ in range(count):
                    skip(item)
            return None

        magic, version, n_tensors, n_kv = take("<4sIQQ")
        if magic != GGUF_MAGIC or version < 2:
            raise GGUFError(f"{path} is not a GGUF file of version 2 or later")
        alignment = 32
        for _ in range(n_kv):
            key = string()
            value = skip(take("<I"))
            if key == "general.alignment":
                alignment = int(value)
        raw = []
        for _ in range(n_tensors):
            name = string()
            dims = [take("<Q") for _ in range(take("<I"))]
            kind, offset = take("<IQ")
            raw.append((name, kind, tuple(reversed(dims)), offset))
    start = -(-pos // alignment) * alignment
    table = {}
    for name, kind, shape, offset in raw:
        if kind not in QUANT_TYPES:
            raise GGUFError(f"{path}: tensor {name}: unsupported type {quant_type_name(kind)}")
        _, per_block, block_bytes = QUANT_TYPES[kind]
        count = int(np.prod(shape, dtype=np.int64))
        table[name] = TensorInfo(kind, shape, start + offset, count // per_block * block_bytes)
    return table


def _int4_groups(name: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 [rows, in], scale and zero float32 [rows, in // 32]) of Q4_0/Q4_1/Q4_K
    blocks [rows, blocks per row, block bytes]; w = (code - 8) * scale + zero exactly."""
    rows = blocks.shape[0]
    flat = blocks.reshape(-1, blocks.shape[-1])
    if name == "Q4_K":
        d, dmin = _f16(flat, 0), _f16(flat, 2)
        sc, mn = _k_scales(flat[:, 4:16])
        codes = _k_quant_4bit(flat[:, 16:144])  # [n, 8, 32]
        scale, zero = d * sc, 8 * d * sc - dmin * mn  # [n, 8]
    else:
        d = _f16(flat, 0)
        codes = _nibbles(flat[:, 4 if name == "Q4_1" else 2:])  # [n, 32]
        scale = d
        zero = (_f16(flat, 2) + 8 * d) if name == "Q4_1" else np.zeros_like(d)
    return (codes.reshape(rows, -1), scale.reshape(rows, -1).astype(np.float32),
            zero.reshape(rows, -1).astype(np.float32))


class _Tensors:
    """The file's tensors by transformers name: raw blocks read with pread (the file's pages
    are not mapped into the process, so they never count in its memory), Q/K rows restored."""

    def __init__(self, path: Path, config: Any) -> None:
        self.path = path
        self.table = tensor_table(path)
        if config.model_type not in ARCHITECTURES:
            raise GGUFError(f"{path}: model type {config.model_type!r} cannot load quantised "
                            f"(Cove runs {', '.join(sorted(ARCHITECTURES))})")
        self.permuted = ARCHITECTURES[config.model_type][2]
        self.heads = {"attn_q": config.num_attention_heads,
                      "attn_k": config.num_key_value_heads}
        self.by_name: dict[str, str] = {}
        for name in self.table:
            if name in _SKIPPED_TENSORS:
                log.warning("%s: %s is not carried over (Llama 3 long-context rope scaling)",
                            path, name)
                continue
            hf = hf_tensor_name(name)
            if hf is None:
                raise GGUFError(f"{path}: tensor {name!r} has no counterpart in a "
                                f"{config.architectures[0]}")
            self.by_name[hf] = name

    def info(self, hf_name: str) -> tuple[str, tuple[int, ...], int, int]:
        """(type name, row-major shape, elements per block, bytes per block)."""
        t = self.table[self.by_name[hf_name]]
        return (*QUANT_TYPES[t.type_id][:1], t.shape, *QUANT_TYPES[t.type_id][1:])

    def blocks(self, hf_name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The raw bytes of rows start..stop as [rows, row bytes] (a vector as one row), Q/K
        rows restored (those are read whole)."""
        t = self.table[self.by_name[hf_name]]
        rows = t.shape[0] if len(t.shape) == 2 else 1
        row_bytes = t.n_bytes // rows
        part = self.by_name[hf_name].split(".")[-2]
        permuted = self.permuted and part in self.heads
        first, last = (0, rows) if permuted else (start, min(rows, stop or rows))
        with open(self.path, "rb") as f:
            raw = os.pread(f.fileno(), (last - first) * row_bytes, t.offset + first * row_bytes)
        if len(raw) != (last - first) * row_bytes:
            raise GGUFError(f"{self.path} is truncated: tensor {self.by_name[hf_name]}")
        data = np.frombuffer(raw, dtype=np.uint8).reshape(last - first, row_bytes)
        if permuted:
            data = unpermute_rows(data, self.heads[part])[start:stop]
        return data

    def float(self, hf_name: str, dtype: torch.dtype) -> torch.Tensor:
        kind, shape, _, _ = self.info(hf_name)
        values = dequantize(self.blocks(hf_name), QUANT_ID[kind], shape)
        return torch.from_numpy(np.ascontiguousarray(values)).to(dtype)

    def int8_rows(self, hf_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 [rows, in], float32 scale [rows]): requantised a slice of rows at a time."""
        from cove.models.weight_only import quantize_int8, release_freed_memory

        kind, shape, _, _ = self.info(hf_name)
        q = torch.empty(shape, dtype=torch.int8)
        scale = torch.empty(shape[0], dtype=torch.float32)
        for r in range(0, shape[0], _ROWS):
            part = self.blocks(hf_name, r, r + _ROWS)
            values = dequantize(part, QUANT_ID[kind], (part.shape[0], shape[1]))
            q[r:r + _ROWS], scale[r:r + _ROWS] = quantize_int8(torch.from_numpy(values))
            del part, values
            # Each slice's freed temporaries back to the system: glibc kept them, scattered,
            # and over SmolLM2's embedding (96 slices) they added ~9 MiB to the load's peak.
            release_freed_memory()
        return q, scale


# Rows converted at once: small temporaries (1 MiB of float32 for SmolLM2's rows of 576), so
# the conversion peaks near the size of the result. A multiple of 64 (see weight_only.pack_int4).
_ROWS = 512
QUANT_ID = {name: type_id for type_id, (name, _, _) in QUANT_TYPES.items()}
_FLOAT_TYPES = {"F32", "F16", "BF16"}


def _linear(tensors: _Tensors, name: str, bias: torch.Tensor | None, compute: torch.dtype,
            dtype: torch.dtype) -> nn.Module:
    from cove.models.weight_only import (
        Int4WeightOnlyLinear,
        Int8WeightOnlyLinear,
        pack_int4,
    )

    kind, shape, per_block, block_bytes = tensors.info(name)
    if kind in _FLOAT_TYPES:
        layer = nn.Linear(shape[1], shape[0], bias=bias is not None, device="meta")
        layer.weight = nn.Parameter(tensors.float(name, dtype), requires_grad=False)
        if bias is not None:
            layer.bias = nn.Parameter(bias, requires_grad=False)
        return layer
    if kind in _INT4_EXACT and shape[0] % 16 == 0:
        packed, scales, zeros = [], [], []
        for r in range(0, shape[0], _ROWS):
            data = tensors.blocks(name, r, r + _ROWS)
            codes, scale, zero = _int4_groups(kind, data.reshape(data.shape[0], -1, block_bytes))
            packed.append(pack_int4(torch.from_numpy(codes)))
            scales.append(torch.from_numpy(scale))
            zeros.append(torch.from_numpy(zero))
        return Int4WeightOnlyLinear(torch.cat(packed), torch.cat(scales), torch.cat(zeros), 32,
                                    bias, compute)
    q, scale = tensors.int8_rows(name)
    return Int8WeightOnlyLinear(q, scale, bias, compute)


class _EmptyOnMeta(TorchFunctionMode):
    """torch.empty makes meta tensors: the float weights the layers' constructors make (and
    parameters_on_meta then moves to the meta device) are never allocated. Allocated and
    freed one by one, they could leave ~240 MiB of free holes between small live
    allocations in glibc's heap (when its mmap threshold had grown), in which later
    temporaries kept touching fresh pages: SmolLM2's RSS then crept ~30 MiB over 500
    decoding steps (~7 without the holes). Buffers made otherwise (rotary frequencies) stay
    real; load_quantized refuses a model left with a meta buffer."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.empty:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def load_quantized(model_class: type, name_or_path: str | os.PathLike, gguf_file: str, *,
                   config: Any = None, dtype: torch.dtype = torch.bfloat16,
                   **hub: Any) -> nn.Module:
    """A `model_class` (a Llama-family CausalLM) built from the GGUF file's quantised blocks
    (see the notes above): weight-only int4/int8 layers computing in `dtype` (bfloat16 or
    float16), everything else in `dtype` too. The configuration and tokenizer come from the
    cache folder of `load_gguf(..., weights=False)`."""
    from cove.models.files import resolve_file
    from cove.models.modeling import parameters_on_meta
    from cove.models.weight_only import Int8Embedding, Int8WeightOnlyLinear, release_freed_memory

    path = resolve_file(name_or_path, gguf_file, required=True, **hub)
    if config is None:
        config = model_class.config_class.from_pretrained(
            load_gguf(name_or_path, gguf_file, weights=False, **hub))
    tensors = _Tensors(path, config)
    with parameters_on_meta(), _EmptyOnMeta():
        model = model_class(config)
    if not hasattr(model, "lm_head") or not hasattr(model, "model"):
        raise GGUFError(f"{type(model).__name__}: a GGUF file loads quantised into a causal "
                        "language model (AutoModelForCausalLM) only")
    missing = [n for n in ("model.embed_tokens.weight", "model.norm.weight")
               if n not in tensors.by_name]
    if missing:
        raise GGUFError(f"{path} lacks {', '.join(missing)}")
    used = set()

    def bias_of(module_name: str) -> torch.Tensor | None:
        name = f"{module_name}.bias"
        if name in tensors.by_name:
            used.add(name)
            return tensors.float(name, dtype)
        return None

    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear and n != "lm_head"]
    for name in linears:
        if f"{name}.weight" not in tensors.by_name:
            raise GGUFError(f"{path} lacks the weight of {name}")
        used.add(f"{name}.weight")
        _set(model, name, _linear(tensors, f"{name}.weight", bias_of(name), dtype, dtype))
        # The layer's temporaries back to the system before the next: kept by glibc between
        # the layers' tensors, they added ~13 MiB to SmolLM2's load peak (with the embedding's
        # slices: 1.30x -> 1.15x the file; tests/models/test_decoding_memory.py).
        release_freed_memory()
    embed = model.model.embed_tokens
    q, scale = tensors.int8_rows("model.embed_tokens.weight")
    used.add("model.embed_tokens.weight")
    model.model.embed_tokens = Int8Embedding(q, scale, dtype, embed.padding_idx)
    if "lm_head.weight" in tensors.by_name:
        used.add("lm_head.weight")
        model.lm_head = _linear(tensors, "lm_head.weight", None, dtype, dtype)
    else:  # tied: the embedding's int8 rows are the head's weight
        model.lm_head = Int8WeightOnlyLinear(q, scale, None, dtype)
    for name, _ in list(model.named_parameters()):
        if name in tensors.by_name and name not in used:
            used.add(name)
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr,
                    nn.Parameter(tensors.float(name, dtype), requires_grad=False))
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise GGUFError(f"{path} lacks {', '.join(left)}")
    unused = sorted(set(tensors.by_name) - used)
    if unused:
        raise GGUFError(f"{path}: tensors {', '.join(unused)} have no place in "
                        f"{type(model).__name__}")
    model.tied_weights = {}  # the head shares the embedding's rows already
    kernels.use_for_linears(model)  # the float layers built here
    release_freed_memory()
    model.is_quantized = True
    model.quantization_config = None
    model.gguf_file = str(path)
    config.dtype = str(dtype).removeprefix("torch.")
    model.eval()
    model.name_or_path = str(name_or_path)
    return model


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
