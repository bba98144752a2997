"""End to end: huggingface_hub 2.x with hf_xet, as installed, uploads a model folder to Cove
through Xet and reads it back through CAS; huggingface_hub 0.36 reads the same files over
plain HTTP (Xet off) and through Xet (its hf_xet), transformers and Cove's own client over
plain HTTP; LFS files live beside Xet ones."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

from tests.server.conftest import seeded_server
from tests.xet.helpers import cas_token, read_reconstruction

pytestmark = [
    pytest.mark.timeout(300),
    # The client's own LFS PUT passes a file object as `data=`, which its HTTP library deprecates.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
REPO = "alice/xet-model"
MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = seeded_server(tmp_path_factory.mktemp("xet-hub"))
    yield live
    live.stop()


def tiny_model(folder: Path):
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    model = BertModel(config).eval()
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def folder(server, tmp_path_factory):
    """A model folder uploaded through Xet: a tiny BERT and ~24 MB of other weights."""
    path = tmp_path_factory.mktemp("model")
    tiny_model(path)
    rng = np.random.default_rng(0)
    (path / "random.bin").write_bytes(rng.bytes(12 * MiB))
    (path / "floats.bin").write_bytes(rng.standard_normal(2 * MiB).astype(np.float32).tobytes())
    (path / "sparse.bin").write_bytes(bytes(3 * MiB) + rng.bytes(MiB // 3))
    saved, constants.HF_HUB_DISABLE_XET = constants.HF_HUB_DISABLE_XET, False
    try:
        api = HfApi(endpoint=server.url, token=server.accounts.alice_write)
        api.create_repo(REPO)
        api.upload_folder(folder_path=str(path), repo_id=REPO)
    finally:
        constants.HF_HUB_DISABLE_XET = saved
    return path


def lfs_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_went_through_xet(server, folder):
    tree = {e.path: e for e in HfApi(endpoint=server.url).list_repo_tree(REPO)}
    assert set(tree) >= set(lfs_names(folder)) | {"config.json"}
    for name in lfs_names(folder):
        r = httpx.head(f"{server.url}/{REPO}/resolve/main/{name}")
        assert tree[name].xet_hash == r.headers["x-xet-hash"]  # clients >= 1.22 skip the HEAD
        assert r.status_code == 200
        oid = sha256(folder / name)
        assert r.headers["etag"] == f'"{oid}"'
        assert len(r.headers["x-xet-hash"]) == 64
        assert 'rel="xet-auth"' in r.headers["link"]
        # No LFS object: the bytes are in xorbs.
        assert not (server.data / "lfs" / oid[:2] / oid[2:4] / oid).exists()


def test_hf_client_downloads_through_xet(server, folder, tmp_path, monkeypatch):
    from huggingface_hub import file_download

    calls = []
    real = file_download.xet_get
    monkeypatch.setattr(file_download, "xet_get", lambda **kw: calls.append(kw) or real(**kw))
    local = snapshot_download(REPO, endpoint=server.url, cache_dir=tmp_path)
    for name in lfs_names(folder) + ["config.json"]:
        assert (Path(local) / name).read_bytes() == (folder / name).read_bytes(), name
    assert len(calls) == len(lfs_names(folder))


def test_hf036_and_transformers_read_it(server, folder, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    hf036 = ROOT / ".venv-hf036" / "bin" / "python"
    if not hf036.exists():
        pytest.skip(f"{hf036} is missing: run `make .venv-hf036`")
    script = textwrap.dedent("""
        import hashlib, json, sys
        import huggingface_hub
        from huggingface_hub import file_download, hf_hub_download
        calls = []
        real = file_download.xet_get
        file_download.xet_get = lambda **kw: calls.append(1) or real(**kw)
        out = {"version": huggingface_hub.__version__}
        for name in sys.argv[2:]:
            path = hf_hub_download(sys.argv[1], name)
            out[name] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        out["xet downloads"] = len(calls)
        print(json.dumps(out))
    """)
    names = lfs_names(folder)
    # .venv-hf036 has hf_xet too: without it (Xet disabled) over plain HTTP, then through Xet.
    for xet_env, xet_downloads in (({}, 0), ({"HF_HUB_DISABLE_XET": "0"}, len(names))):
        proc = subprocess.run([str(hf036), "-c", script, REPO, *names], env={**env, **xet_env},
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got.pop("version").startswith("0.36")
        assert got.pop("xet downloads") == xet_downloads
        assert got == {name: sha256(folder / name) for name in names}
        env["HF_HOME"] = str(tmp_path / "home-xet")  # a cold cache for the second run

    loader = textwrap.dedent("""
        import sys
        from transformers import AutoModel
        model = AutoModel.from_pretrained(sys.argv[1])
        print(float(sum(p.double().sum() for p in model.state_dict().values())))
    """)
    proc = subprocess.run([sys.executable, "-c", loader, REPO], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    from safetensors.numpy import load_file

    weights = load_file(folder / "model.safetensors")
    expected = sum(float(w.astype(np.float64).sum()) for w in weights.values())
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(expected)


def test_cove_client_and_ranges(server, folder, tmp_path):
    from cove.hub import snapshot_download as cove_snapshot

    local = cove_snapshot(REPO, endpoint=server.url, cache_dir=tmp_path)
    for name in lfs_names(folder):
        assert (Path(local) / name).read_bytes() == (folder / name).read_bytes(), name
    data = (folder / "random.bin").read_bytes()
    for start, end in [(0, 0), (5, 70_000), (1_000_000, 3_500_000), (len(data) - 10, len(data) - 1)]:
        r = httpx.get(f"{server.url}/{REPO}/resolve/main/random.bin",
                      headers={"Range": f"bytes={start}-{end}"})
        assert r.status_code == 206
        assert r.content == data[start : end + 1]
        assert r.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"


def test_reconstruction_ranges(server, folder):
    data = (folder / "floats.bin").read_bytes()
    head = httpx.head(f"{server.url}/{REPO}/resolve/main/floats.bin")
    file_hash = head.headers["x-xet-hash"]
    token = cas_token(server.url, REPO, None)  # a public repository: anonymous reads
    auth = {"authorization": f"Bearer {token['accessToken']}"}
    url = f"{token['casUrl']}/v1/reconstructions/{file_hash}"
    assert read_reconstruction(httpx.get(url, headers=auth).json()) == data
    for start, end in [(0, 99), (100_001, 2_000_000), (len(data) - 1, len(data) + 50)]:
        r = httpx.get(url, headers={**auth, "Range": f"bytes={start}-{end}"})
        assert r.status_code == 200
        assert read_reconstruction(r.json())[: end - start + 1] == data[start : end + 1]
    r = httpx.get(url, headers={**auth, "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416


def test_lfs_and_xet_side_by_side(server, folder, tmp_path):
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(np.random.default_rng(9).bytes(2 * MiB))
    saved, constants.HF_HUB_DISABLE_XET = constants.HF_HUB_DISABLE_XET, True
    try:
        HfApi(endpoint=server.url, token=server.accounts.alice_write).upload_file(
            path_or_fileobj=str(legacy), path_in_repo="legacy.bin", repo_id=REPO)
    finally:
        constants.HF_HUB_DISABLE_XET = saved
    oid = sha256(legacy)
    assert (server.data / "lfs" / oid[:2] / oid[2:4] / oid).exists()
    assert "x-xet-hash" not in httpx.head(f"{server.url}/{REPO}/resolve/main/legacy.bin").headers
    for name, expected in (("legacy.bin", legacy), ("random.bin", folder / "random.bin")):
        path = hf_hub_download(REPO, name, endpoint=server.url, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == expected.read_bytes()
    # git-lfs clients read a Xet file through the batch API like any LFS object.
    oid = sha256(folder / "sparse.bin")
    size = (folder / "sparse.bin").stat().st_size
    batch = httpx.post(
        f"{server.url}/{REPO}.git/info/lfs/objects/batch",
        json={"operation": "download", "objects": [{"oid": oid, "size": size}]},
        headers={"content-type": "application/vnd.git-lfs+json"},
    ).json()
    href = batch["objects"][0]["actions"]["download"]["href"]
    assert httpx.get(href).content == (folder / "sparse.bin").read_bytes()
