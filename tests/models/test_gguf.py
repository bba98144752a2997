"""GGUF conversion (cove.models.gguf) against the `gguf` package and transformers' GGUF loader.

- Dequantisation of every supported type equals gguf's own dequantize (the oracle), and
  hand-built blocks give their known values.
- Small synthetic GGUF files written with gguf.GGUFWriter: a Llama with a tensor of every
  quantisation type and Mistral's SentencePiece vocabulary, a Qwen2 (biases) and a Qwen3
  (q/k norms) with GPT-2's byte-level BPE vocabulary; converted, they give exactly the weights
  and logits of transformers loading the GGUF directly.
- The real SmolLM2-135M-Instruct (Q4_1 linear weights, Q8_0 embeddings; tests/.data/smollm2,
  fetched by tests/fetch_data.py): logits, greedy decoding, tokenizer and chat template.
- `cove convert gguf` as a subprocess, and malformed files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

from cove.models import gguf as cg

DATA = Path(__file__).resolve().parents[1] / ".data"
SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2 = DATA / "smollm2" / SMOLLM2_NAME
REPO = Path(__file__).resolve().parents[2]

QUANTISED = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
# where each block keeps its float16 scale(s), and a magnitude that keeps values near 0.1
SCALES = {T.Q4_0: ((0,), 2e-2), T.Q4_1: ((0, 2), 2e-2), T.Q5_0: ((0,), 1e-2),
          T.Q5_1: ((0, 2), 1e-2), T.Q8_0: ((0,), 1e-3), T.Q4_K: ((0, 2), 1e-3),
          T.Q5_K: ((0, 2), 5e-4), T.Q6_K: ((208,), 1e-4)}


def random_blocks(rng: np.random.Generator, qtype: T, rows: int, cols: int) -> np.ndarray:
    """Random quantised rows [rows, bytes]: random bits, with finite, small scales."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block_elems, block_bytes), dtype=np.uint8)
    offsets, scale = SCALES[qtype]
    for off in offsets:
        values = (rng.uniform(0.2, 1.0, size=raw.shape[:2]) * scale).astype(np.float16)
        raw[:, :, off:off + 2] = values.view(np.uint8).reshape(rows, -1, 2)
    return raw.reshape(rows, -1)


def to_bf16_bytes(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8) \
        .reshape(x.shape[0], -1)


def finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def need_data() -> None:
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2} is missing: run `make tests/.data/.fetched` "
                    "(or `python tests/fetch_data.py`) to download it")


def smollm2_float32() -> Path:
    """The real SmolLM2 as a float32 folder, converted once per run into the suite's shared
    GGUF cache (tests/conftest.py): read it, never write into it."""
    need_data()
    return cg.load_gguf(SMOLLM2.parent, SMOLLM2_NAME, dtype="float32")


# -- (a) dequantisation -------------------------------------------------------------------
@pytest.mark.parametrize("qtype", QUANTISED, ids=lambda t: t.name)
def test_dequantize_matches_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    rows, cols = 6, 512
    raw = random_blocks(rng, qtype, rows, cols)
    ours = cg.dequantize(raw, int(qtype), (rows, cols))
    assert ours.dtype == np.float32 and ours.shape == (rows, cols)
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(raw, qtype))
    assert np.isfinite(ours).all() and ours.std() > 0


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_float_types_match_gguf(name):
    values = np.random.default_rng(3).standard_normal((4, 40)).astype(np.float32)
    if name == "F32":
        raw, qtype, expected = values, T.F32, values
    elif name == "F16":
        raw, qtype = values.astype(np.float16), T.F16
        expected = raw.astype(np.float32)
    else:
        raw, qtype = to_bf16_bytes(values), T.BF16
        expected = gguf.quants.dequantize(raw, T.BF16)
        np.testing.assert_allclose(expected, values, rtol=1e-2)
    np.testing.assert_array_equal(cg.dequantize(raw, int(qtype), (4, 40)), expected)


def test_hand_built_blocks():
    f16 = lambda v: np.array([v], dtype=np.float16).view(np.uint8)  # noqa: E731
    qs = np.arange(32, dtype=np.int8) - 16
    q8 = np.concatenate([f16(0.5), qs.view(np.uint8)])
    np.testing.assert_array_equal(cg.dequantize(q8, int(T.Q8_0), (32,)), qs * 0.5)
    # 4-bit: byte j holds value j (low nibble) and value j + 16 (high nibble)
    nibbles = np.arange(16, dtype=np.uint8)
    packed = nibbles | ((15 - nibbles) << 4)
    expected_q = np.concatenate([nibbles, 15 - nibbles]).astype(np.float32)
    q4_0 = np.concatenate([f16(0.25), packed])
    np.testing.assert_array_equal(cg.dequantize(q4_0, int(T.Q4_0), (32,)),
                                  (expected_q - 8) * 0.25)
    q4_1 = np.concatenate([f16(0.5), f16(-2.0), packed])
    np.testing.assert_array_equal(cg.dequantize(q4_1, int(T.Q4_1), (32,)),
                                  expected_q * 0.5 - 2.0)
    # Q4_K: d = 0.5, dmin = 0.25, every sub-block scale 2 and min 1, all values 3 -> 2.75
    scales = np.array([2] * 4 + [1] * 4 + [0x12] * 4, dtype=np.uint8)
    q4_k = np.concatenate([f16(0.5), f16(0.25), scales, np.full(128, 0x33, np.uint8)])
    np.testing.assert_array_equal(cg.dequantize(q4_k, int(T.Q4_K), (256,)),
                                  np.full(256, 0.5 * 2 * 3 - 0.25 * 1, np.float32))


def test_dequantize_refuses_bad_input():
    with pytest.raises(cg.GGUFError, match="needs 34 bytes"):
        cg.dequantize(np.zeros(33, np.uint8), int(T.Q8_0), (32,))
    with pytest.raises(cg.GGUFError, match="not whole blocks"):
        cg.dequantize(np.zeros(34, np.uint8), int(T.Q8_0), (1, 16))
    with pytest.raises(cg.GGUFError, match="unsupported tensor type Q2_K"):
        cg.dequantize(np.zeros(84, np.uint8), int(T.Q2_K), (256,))


def test_unpermute_inverts_llama_cpp():
    rng = np.random.default_rng(0)
    for n_head, rows, cols in ((9, 576, 8), (3, 192, 8), (4, 32, 3)):
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        # llama.cpp's convert_hf_to_gguf.py permute()
        stored = w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(w.shape)
        np.testing.assert_array_equal(cg.unpermute_rows(stored, n_head), w)
        # the look-alike reshape(n_head, 2, ...) is not the inverse
        wrong = stored.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2) \
            .reshape(w.shape)
        assert not np.array_equal(wrong, w)
        bias = w[:, 0].copy()
        stored_bias = bias.reshape(n_head, 2, -1).swapaxes(1, 2).reshape(-1)
        np.testing.assert_array_equal(cg.unpermute_rows(stored_bias, n_head), bias)


def test_real_smollm2_tensors_match_gguf():
    need_data()
    ours = cg.GGUFFile(SMOLLM2)
    seen = set()
    for t in ours.reader.tensors:
        if t.name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.7.ffn_down.weight",
                      "blk.29.attn_norm.weight"):
            seen.add(t.tensor_type.name)
            np.testing.assert_array_equal(ours.tensor(t.name),
                                          gguf.quants.dequantize(t.data, t.tensor_type))
    assert seen == {"Q8_0", "Q4_1", "F32"}


# -- synthetic files ----------------------------------------------------------------------
def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((DATA / "mistral" / "tokenizer.model").read_bytes())
    # SentencePiece's piece types have llama.cpp's token type numbers (1 normal ... 6 byte)
    return ([p.piece for p in proto.pieces], [p.score for p in proto.pieces],
            [int(p.type) for p in proto.pieces])


def gpt2_vocab() -> tuple[list[str], list[str], list[int]]:
    vocab = json.loads((DATA / "gpt2" / "vocab.json").read_text(encoding="utf-8"))
    merges = [m for m in (DATA / "gpt2" / "merges.txt").read_text(encoding="utf-8")
              .split("\n")[1:] if m]
    tokens = sorted(vocab, key=vocab.get)
    types = [cg.CONTROL if t == "<|endoftext|>" else cg.NORMAL for t in tokens]
    return tokens, merges, types


LLAMA_TYPES = [  # per layer: a tensor of every type Cove dequantises
    {"attn_q": T.Q4_K, "attn_k": T.Q5_K, "attn_v": T.Q6_K, "attn_output": T.Q4_0,
     "ffn_gate": T.Q5_0, "ffn_up": T.Q5_1, "ffn_down": T.Q4_1},
    {"attn_q": T.F16, "attn_k": T.BF16, "attn_v": T.F32, "attn_output": T.Q8_0,
     "ffn_gate": T.Q4_K, "ffn_up": T.Q6_K, "ffn_down": T.Q5_K},
]
CHAT = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def write_llama(path: Path, hidden: int = 256, heads: int = 4, kv: int = 2, ffn: int = 512
                ) -> None:
    rng = np.random.default_rng(0)
    tokens, scores, types = spm_vocab()
    w = GGUFWriter(path, arch="llama")
    w.add_block_count(len(LLAMA_TYPES))
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT)
    shapes = {"attn_q": (hidden, hidden), "attn_k": (kv * hidden // heads, hidden),
              "attn_v": (kv * hidden // heads, hidden), "attn_output": (hidden, hidden),
              "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}

    def add(name: str, qtype: T, rows: int, cols: int) -> None:
        if qtype in SCALES:
            w.add_tensor(name, random_blocks(rng, qtype, rows, cols), raw_dtype=qtype)
            return
        values = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        if qtype == T.BF16:
            w.add_tensor(name, to_bf16_bytes(values), raw_dtype=T.BF16)
        else:
            w.add_tensor(name, values.astype(np.float16 if qtype == T.F16 else np.float32))

    add("token_embd.weight", T.Q8_0, len(tokens), hidden)
    w.add_tensor("output_norm.weight", rng.uniform(0.5, 1.5, hidden).astype(np.float32))
    add("output.weight", T.Q6_K, len(tokens), hidden)
    for i, kinds in enumerate(LLAMA_TYPES):
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", rng.uniform(0.5, 1.5, hidden).astype(np.float32))
        for part, qtype in kinds.items():
            add(f"blk.{i}.{part}.weight", qtype, *shapes[part])
    finish(w)


def write_qwen(path: Path, arch: str, hidden: int, heads: int, kv: int, head_dim: int,
               ffn: int = 128, pre: str = "qwen2") -> None:
    rng = np.random.default_rng(1)
    tokens, merges, types = gpt2_vocab()
    w = GGUFWriter(path, arch=arch)
    w.add_block_count(2)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1000000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(50256)
    w.add_eos_token_id(50256)
    w.add_pad_token_id(50256)
    w.add_add_bos_token(False)

    def f16(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float16)

    def norm(n: int) -> np.ndarray:
        return rng.uniform(0.5, 1.5, n).astype(np.float32)

    w.add_tensor("token_embd.weight", f16(len(tokens), hidden))  # tied: no output.weight
    w.add_tensor("output_norm.weight", norm(hidden))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm(hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm(hidden))
        for part, rows in (("q", heads * head_dim), ("k", kv * head_dim), ("v", kv * head_dim)):
            w.add_tensor(f"blk.{i}.attn_{part}.weight", f16(rows, hidden))
            if arch == "qwen2":
                w.add_tensor(f"blk.{i}.attn_{part}.bias",
                             (rng.standard_normal(rows) * 0.1).astype(np.float32))
        w.add_tensor(f"blk.{i}.attn_output.weight", f16(hidden, heads * head_dim))
        if arch == "qwen3":
            w.add_tensor(f"blk.{i}.attn_q_norm.weight", norm(head_dim))
            w.add_tensor(f"blk.{i}.attn_k_norm.weight", norm(head_dim))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", f16(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", f16(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", f16(hidden, ffn))
    finish(w)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """name -> (folder holding NAME.gguf, converted folder)."""
    if not (DATA / "mistral" / "tokenizer.model").is_file():
        pytest.fail("tests/.data is missing: run `make tests/.data/.fetched`")
    root = tmp_path_factory.mktemp("gguf-synthetic")
    write_llama(root / "llama.gguf")
    write_qwen(root / "qwen2.gguf", "qwen2", hidden=64, heads=4, kv=2, head_dim=16)
    # transformers' GGUF loader ignores qwen3.attention.key_length: use Qwen3's usual 128
    write_qwen(root / "qwen3.gguf", "qwen3", hidden=256, heads=2, kv=1, head_dim=128)
    for name in ("llama", "qwen2", "qwen3"):
        cg.convert_gguf(root / f"{name}.gguf", root / name)
    return {"root": root}


def transformers_pair(root: Path, name: str):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(root, gguf_file=f"{name}.gguf")
    ours = AutoModelForCausalLM.from_pretrained(root / name)
    return ref, ours


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_synthetic_models_match_transformers(synthetic, name):
    root = synthetic["root"]
    ref, ours = transformers_pair(root, name)
    assert type(ref) is type(ours)
    expected, got = ref.state_dict(), ours.state_dict()
    assert set(expected) == set(got)
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    ids = torch.tensor([[1, 100, 2000, 30000, 5, 9]])
    with torch.no_grad():
        want = ref(ids).logits
        assert torch.equal(ours(ids).logits, want)
    config = json.loads((root / name / "config.json").read_text())
    assert config["model_type"] == name
    assert config["tie_word_embeddings"] is (name != "llama")
    from cove.models import AutoModelForCausalLM

    cove_model = AutoModelForCausalLM.from_pretrained(root / name)
    with torch.no_grad():
        torch.testing.assert_close(cove_model(ids).logits, want, rtol=1e-4, atol=1e-4)


SPM_TEXTS = ["Hello world", " leading space", "  two spaces", "The capital of France is",
             "tabs\tand\nnewlines\n\n", "числа 12345 and 3.14159", "emoji 😀🎉 café naïve",
             "日本語のテキスト", "don't I'll", "", "end. ", "ǅ ﬁ ligature", "\u00a0nbsp"]


def test_sentencepiece_vocabulary_tokenizes_as_sentencepiece(synthetic):
    """A 'llama' (SentencePiece) vocabulary: ids as SentencePiece itself gives them, with
    llama.cpp's space prefix after special tokens. (transformers' GGUF tokenizer drops the
    extra '▁' SentencePiece puts before text that starts with a space.)"""
    import sentencepiece
    from transformers import AutoTokenizer as HFAutoTokenizer

    from cove.tokenizers import AutoTokenizer

    sp = sentencepiece.SentencePieceProcessor(model_file=str(DATA / "mistral" / "tokenizer.model"))
    folder = synthetic["root"] / "llama"
    theirs = HFAutoTokenizer.from_pretrained(folder)
    ours = AutoTokenizer.from_pretrained(folder)
    for text in SPM_TEXTS:
        want = [1] + sp.encode(text)
        assert theirs(text)["input_ids"] == want, text
        assert ours(text)["input_ids"] == want, text
        assert ours.decode(want, skip_special_tokens=True) == sp.decode(want[1:]), text
    # special tokens in the text, each following chunk with its own '▁' as llama.cpp does
    assert ours("a</s>b")["input_ids"] == [1, sp.piece_to_id("▁a"), 2, sp.piece_to_id("▁b")]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == \
        ("<s>", "</s>", "<unk>")
    assert config["chat_template"] == CHAT


QWEN_TEXTS = ["Hello world", "a  1 22 333 4444", "x\n 2", "don't DON'T", "  \n\n  spaces\t\t",
              "café 😀 日本語", "<|endoftext|>hi", "line one\r\nline two", "$1,000.50!!"]


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_byte_level_vocabulary_matches_transformers(synthetic, name):
    from transformers import AutoTokenizer as HFAutoTokenizer

    from cove.tokenizers import AutoTokenizer

    root = synthetic["root"]
    ref = HFAutoTokenizer.from_pretrained(root, gguf_file=f"{name}.gguf")
    ours = AutoTokenizer.from_pretrained(root / name)
    theirs = HFAutoTokenizer.from_pretrained(root / name)
    for text in QWEN_TEXTS:
        want = ref(text)["input_ids"]
        assert ours(text)["input_ids"] == want, text
        assert theirs(text)["input_ids"] == want, text
        assert ours.decode(want) == text


def test_dtype_option(synthetic, tmp_path):
    from safetensors import safe_open

    out = cg.convert_gguf(synthetic["root"] / "qwen2.gguf", tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="Unsupported dtype"):
        cg.convert_gguf(synthetic["root"] / "qwen2.gguf", tmp_path / "x", dtype="int8")


# -- (b) the real SmolLM2 -----------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> dict:
    """A conversion of its own (timed), removed after the module: 517 MiB."""
    need_data()
    out = tmp_path_factory.mktemp("gguf-smollm2") / "SmolLM2-135M-Instruct"
    start = time.perf_counter()
    cg.convert_gguf(SMOLLM2, out)
    yield {"dir": out, "seconds": time.perf_counter() - start}
    shutil.rmtree(out.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def smollm2_reference():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    need_data()
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME)
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME)
    return model, tokenizer


def test_smollm2_folder(smollm2):
    folder = smollm2["dir"]
    assert smollm2["seconds"] < 30
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left
    config = json.loads((folder / "config.json").read_text())
    expected = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 100000.0,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "dtype": "float32", "hidden_act": "silu",
    }
    assert {k: config[k] for k in expected} == expected
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 100000.0}
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"].startswith("{% for message in messages %}")
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == \
        ("<|im_start|>", "<|im_end|>")
    assert len(tokenizer_config["added_tokens_decoder"]) == 17


def test_smollm2_logits_match_transformers_gguf(smollm2, smollm2_reference):
    from transformers import LlamaForCausalLM

    ref, ref_tokenizer = smollm2_reference
    ours = LlamaForCausalLM.from_pretrained(smollm2["dir"])
    ids = ref_tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids).logits
    diff = (got - want).abs().max().item()
    assert diff <= 1e-4 * want.abs().max().item(), diff
    out = ours.generate(ids, max_new_tokens=3, do_sample=False)
    assert ref_tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Paris")


def test_smollm2_cove_model(smollm2, smollm2_reference):
    from cove.models import AutoModelForCausalLM

    ref, ref_tokenizer = smollm2_reference
    ours = AutoModelForCausalLM.from_pretrained(smollm2["dir"])
    prompt = ref_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(ours(prompt).logits, ref(prompt).logits,
                                   rtol=1e-4, atol=1e-4)


SMOLLM_TEXTS = [
    "Hello world", "The capital of France is", "  leading spaces", "tabs\tand\nnewlines\n\n",
    "числа 12345 and 3.14159", "emoji 😀🎉 café naïve", "<|im_start|>user\nhi<|im_end|>\n",
    "don't I'll we're", "", "   ", "日本語のテキスト", "price: $1,000,000!!",
    "def f(x):\n    return x**2  # comment", "Größenverhältnisse über München",
    "<jupyter_code>print('hi')<empty_output>", "e-mail: someone@example.com",
]


def test_smollm2_tokenizer_matches_transformers_gguf(smollm2, smollm2_reference):
    from transformers import AutoTokenizer as HFAutoTokenizer

    from cove.tokenizers import AutoTokenizer

    _, ref = smollm2_reference
    theirs = HFAutoTokenizer.from_pretrained(smollm2["dir"])
    ours = AutoTokenizer.from_pretrained(smollm2["dir"])
    for text in SMOLLM_TEXTS:
        want = ref(text)["input_ids"]
        assert theirs(text)["input_ids"] == want, text
        assert ours(text)["input_ids"] == want, text
        assert ours.decode(want) == text
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token) == \
        (ref.bos_token, ref.eos_token, ref.pad_token, ref.unk_token)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "What is 2+2?"}]
    want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
        == want
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == want
    assert want.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def bytes_to_unicode() -> dict[int, str]:
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def llama_cpp_smollm(text: str, vocab: dict[str, int], ranks: dict[tuple[str, str], int]
                     ) -> list[int]:
    """llama.cpp's 'smollm' pre-tokenizer (each digit alone, then GPT-2's split) and BPE."""
    import regex

    table = bytes_to_unicode()
    pieces = [p for chunk in regex.split(r"(\p{N})", text) if chunk
              for p in regex.findall(GPT2_SPLIT, chunk)]
    ids = []
    for piece in pieces:
        word = [table[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            rank, i = min((ranks.get(pair, math.inf), i)
                          for i, pair in enumerate(zip(word, word[1:], strict=False)))
            if rank == math.inf:
                break
            word[i:i + 2] = [word[i] + word[i + 1]]
        ids += [vocab[w] for w in word]
    return ids


def test_smollm2_digits_split_as_llama_cpp(smollm2, smollm2_reference):
    """tokenizer.ggml.pre = 'smollm': llama.cpp splits each digit off before GPT-2's regex (as
    SmolLM2's own tokenizer.json does), so whitespace before a digit stays one run ('ĠĠ').
    transformers' GGUF tokenizer splits with GPT-2's regex only, which differs exactly there."""
    from cove.tokenizers import AutoTokenizer

    _, ref = smollm2_reference
    ours = AutoTokenizer.from_pretrained(smollm2["dir"])
    data = json.loads((smollm2["dir"] / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    ranks = {tuple(m if isinstance(m, list) else m.split(" ")): i
             for i, m in enumerate(data["model"]["merges"])}
    for text in ["a  1", "x\n 2", "year  2024 and  99", *SMOLLM_TEXTS[:6]]:
        assert ours(text)["input_ids"] == llama_cpp_smollm(text, vocab, ranks), text
    assert ours("a  1")["input_ids"] == [vocab["a"], vocab["ĠĠ"], vocab["1"]]
    # (transformers 5.24's GGUF tokenizer gives [a, Ġ, Ġ, 1] here)
    assert ref("a 1")["input_ids"] == ours("a 1")["input_ids"]


def test_from_pretrained_gguf_file(smollm2, monkeypatch, tmp_path):
    """from_pretrained(folder, gguf_file=...) converts once into the cache, then reuses it."""
    from cove.models import AutoConfig, AutoModelForCausalLM
    from cove.tokenizers import AutoTokenizer

    monkeypatch.setenv("COVE_GGUF_CACHE", str(tmp_path / "cache"))
    config = AutoConfig.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME)
    assert (config.model_type, config.num_key_value_heads) == ("llama", 3)
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME)
    assert tokenizer("The capital of France is")["input_ids"] == [504, 3575, 282, 4649, 314]
    # config and tokenizer alone do not dequantise the weights
    assert not list((tmp_path / "cache").glob("*/model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME)
    folders = sorted((tmp_path / "cache").iterdir())
    start = time.perf_counter()
    again = type(model).from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME)
    assert time.perf_counter() - start < 10
    assert sorted((tmp_path / "cache").iterdir()) == folders  # reused, not converted again
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)
        from transformers import LlamaForCausalLM

        ref = LlamaForCausalLM.from_pretrained(smollm2["dir"])
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)


# -- (c) the command line -----------------------------------------------------------------
def run_cove(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "cove", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_convert_gguf(synthetic, tmp_path):
    source = synthetic["root"] / "qwen2.gguf"
    out = tmp_path / "converted"
    result = run_cove("convert", "gguf", str(source), str(out), "--dtype", "float16")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    result = run_cove("convert", "gguf", str(source), str(out))
    assert result.returncode == 1
    assert "exists and is not empty" in result.stderr and "Traceback" not in result.stderr
    result = run_cove("convert", "gguf", str(source), str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf file")
    result = run_cove("convert", "gguf", str(bad), str(tmp_path / "never"))
    assert result.returncode == 1
    assert "is not a GGUF file" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "never").exists()


# -- (d) malformed files ------------------------------------------------------------------
def test_malformed_files(synthetic, tmp_path):
    source = (synthetic["root"] / "qwen2.gguf").read_bytes()
    cases = {
        "empty.gguf": (b"", "it is empty"),
        "magic.gguf": (b"GGML" + source[4:], "is not a GGUF file"),
        "header.gguf": (source[:100], "truncated or corrupt"),
        "data.gguf": (source[:len(source) // 2], "truncated"),
        "last-byte.gguf": (source[:-1], "truncated"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(cg.GGUFError, match=message):
            cg.convert_gguf(path, tmp_path / f"{name}.out")
        assert not (tmp_path / f"{name}.out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)  # no temp folder left
    with pytest.raises(cg.GGUFError, match="is not a file"):
        cg.convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")


def test_unsupported_contents(tmp_path):
    w = GGUFWriter(tmp_path / "gpt2.gguf", arch="gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    finish(w)
    with pytest.raises(cg.GGUFError, match="architecture 'gpt2' is not supported"):
        cg.convert_gguf(tmp_path / "gpt2.gguf", tmp_path / "a")
    w = GGUFWriter(tmp_path / "q2k.gguf", arch="llama")
    for key, value in (("block_count", 1), ("embedding_length", 256),
                       ("feed_forward_length", 256), ("attention.head_count", 2)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tensor("token_embd.weight", np.zeros((2, 84), np.uint8), raw_dtype=T.Q2_K)
    finish(w)
    with pytest.raises(cg.GGUFError, match="token_embd.weight: unsupported tensor type Q2_K"):
        cg.convert_gguf(tmp_path / "q2k.gguf", tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2.gguf", "q2k.gguf"]
