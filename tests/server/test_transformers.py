"""End to end: `transformers` loads from and pushes to a live `cove serve` via HF_ENDPOINT.

The clients read HF_ENDPOINT when they are imported and this process imported huggingface_hub
long ago, so the loading side runs in a fresh subprocess with the endpoint in its environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from huggingface_hub import HfApi  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizer  # noqa: E402

# The client's own LFS PUT passes a file object as `data=`, which its HTTP library deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "hello", "world", "the", "cat", "sat", "on", "mat", "play", "dog",
    "##s", "##ing", "##ed", ",", ".", "!",
]
TEXT = "Hello world, the cats sat on the mat playing!"
EXPECTED_IDS = [2, 5, 6, 17, 7, 8, 14, 9, 10, 7, 11, 12, 15, 19, 3]
# Same weights, another process: the outputs may differ in the last bits (kernel choice), not more.
CLOSE = {"rtol": 1e-5, "atol": 1e-6}

LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModel, AutoTokenizer

    repo, text, out = sys.argv[1], sys.argv[2], sys.argv[3]
    tokenizer = AutoTokenizer.from_pretrained(repo)
    model = AutoModel.from_pretrained(repo).eval()
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    torch.save({"ids": enc["input_ids"][0].tolist(), "hidden": hidden,
                "tokenizer": type(tokenizer).__name__, "model": type(model).__name__}, out)
    if len(sys.argv) > 4:
        # Push to a new repository (created by push_to_hub), with a change to find later.
        model.config.cove_pushed = True
        model.push_to_hub(sys.argv[4], commit_message="Push from transformers")
        tokenizer.push_to_hub(sys.argv[4])
    """
)


def tiny_bert(folder: Path) -> tuple[BertModel, BertTokenizer]:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    model = BertModel(config).eval()
    # `BertTokenizer(vocab_file=...)` is silently ignored by transformers 5: pass the dict.
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)})
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def run_loader(server, home: Path, args: list[str], offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=server.url,
        HF_TOKEN=server.accounts.alice_write,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(home),
        # The machine may be busy with other suites: do not fail on the 10 s default.
        HF_HUB_ETAG_TIMEOUT="60",
        HF_HUB_DOWNLOAD_TIMEOUT="60",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    out = home / "out.pt"
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, *args[:2], str(out), *args[2:]],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"loader failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return torch.load(out)


@pytest.fixture(scope="module")
def uploaded(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    model, tokenizer = tiny_bert(folder)
    api = HfApi(endpoint=server.url, token=server.accounts.alice_write)
    api.create_repo("alice/tiny-bert", private=True)
    commit = api.upload_folder(repo_id="alice/tiny-bert", folder_path=folder,
                               commit_message="Add tiny BERT")
    enc = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    return {"folder": folder, "model": model, "ids": enc["input_ids"][0].tolist(),
            "hidden": hidden, "commit": commit.oid, "api": api}


def test_upload_layout(uploaded):
    api = uploaded["api"]
    files = set(api.list_repo_files("alice/tiny-bert"))
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= files
    info = api.model_info("alice/tiny-bert", files_metadata=True)
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs is not None  # *.safetensors goes to LFS by .gitattributes
    assert weights.size == (uploaded["folder"] / "model.safetensors").stat().st_size
    assert uploaded["ids"] == EXPECTED_IDS


def test_from_pretrained_and_push(server, uploaded, tmp_path):
    home = tmp_path / "hf-home"
    got = run_loader(server, home, ["alice/tiny-bert", TEXT, "alice/tiny-bert-pushed"])
    assert got["model"] == "BertModel"
    assert got["ids"] == uploaded["ids"] == EXPECTED_IDS
    torch.testing.assert_close(got["hidden"], uploaded["hidden"], **CLOSE)

    # The subprocess's cache has the Hub's layout, pinned to the upload's commit.
    repo_cache = home / "hub" / "models--alice--tiny-bert"
    assert (repo_cache / "refs" / "main").read_text() == uploaded["commit"]
    snapshot = repo_cache / "snapshots" / uploaded["commit"]
    assert (snapshot / "model.safetensors").read_bytes() == (
        uploaded["folder"] / "model.safetensors"
    ).read_bytes()

    api = uploaded["api"]
    # Downloading config.json and the weights counted (once).
    assert api.model_info("alice/tiny-bert").downloads == 1

    # push_to_hub created the repository and committed weights, config and tokenizer.
    pushed = api.model_info("alice/tiny-bert-pushed", files_metadata=True)
    names = {s.rfilename for s in pushed.siblings}
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert "Push from transformers" in [c.title for c in api.list_repo_commits(
        "alice/tiny-bert-pushed")]
    weights = api.hf_hub_download("alice/tiny-bert-pushed", "model.safetensors",
                                  cache_dir=tmp_path / "check")
    tensors = load_file(weights)
    expected = uploaded["model"].state_dict()
    assert set(tensors) <= set(expected)
    for name, tensor in tensors.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    config = api.hf_hub_download("alice/tiny-bert-pushed", "config.json",
                                 cache_dir=tmp_path / "check")
    assert '"cove_pushed": true' in Path(config).read_text()

    # What was cached is enough to load offline.
    again = run_loader(server, home, ["alice/tiny-bert", TEXT], offline=True)
    assert again["ids"] == EXPECTED_IDS
    torch.testing.assert_close(again["hidden"], uploaded["hidden"], **CLOSE)

    # And the pushed copy loads like the original.
    pushed_out = run_loader(server, tmp_path / "other-home", ["alice/tiny-bert-pushed", TEXT])
    assert pushed_out["ids"] == EXPECTED_IDS
    torch.testing.assert_close(pushed_out["hidden"], uploaded["hidden"], **CLOSE)
