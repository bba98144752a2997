"""Downloads: the shared cache with huggingface_hub both ways, resume, corruption, offline."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub as hh
import pytest

from cove.hub import (
    CorruptedDownloadError,
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    hf_hub_download,
    snapshot_download,
)
from tests.hub.proxy import FaultyProxy
from tests.server.conftest import seeded_server

REPO = "alice/dl"
BIG = os.urandom(12 * 1024 * 1024 + 7)
SMALL = {"config.json": b'{"hidden_size": 8}', "sub/notes.txt": b"notes" * 100,
         "README.md": b"---\nlicense: mit\n---\n"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    live = seeded_server(tmp_path_factory.mktemp("hubdl"))
    api = hh.HfApi(endpoint=live.url, token=live.accounts.alice_write)
    api.create_repo(REPO)
    folder = tmp_path_factory.mktemp("src")
    for name, data_ in {**SMALL, "model.safetensors": BIG}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data_)
    api.upload_folder(repo_id=REPO, folder_path=folder)
    live.token = live.accounts.alice_write
    yield live
    live.stop()


def read(path: str) -> bytes:
    return Path(path).read_bytes()


def test_cove_cache_is_read_offline_by_huggingface_hub(srv, tmp_path):
    folder = snapshot_download(REPO, endpoint=srv.url, cache_dir=tmp_path)
    assert read(f"{folder}/model.safetensors") == BIG
    for name in SMALL:
        theirs = hh.hf_hub_download(REPO, name, cache_dir=tmp_path, local_files_only=True)
        assert theirs == f"{folder}/{name}" and read(theirs) == SMALL[name]
    assert hh.snapshot_download(REPO, cache_dir=tmp_path, local_files_only=True) == folder
    assert Path(f"{folder}/model.safetensors").is_symlink()


def test_huggingface_hub_cache_is_read_offline_by_cove(srv, tmp_path):
    theirs = hh.snapshot_download(REPO, endpoint=srv.url, cache_dir=tmp_path)
    ours = snapshot_download(REPO, cache_dir=tmp_path, local_files_only=True)
    assert ours == theirs
    for name, data in {**SMALL, "model.safetensors": BIG}.items():
        path = hf_hub_download(REPO, name, cache_dir=tmp_path, local_files_only=True)
        assert read(path) == data


def test_offline_mode_names_the_missing_file(srv, tmp_path, monkeypatch):
    hf_hub_download(REPO, "config.json", endpoint=srv.url, cache_dir=tmp_path)
    monkeypatch.setenv("COVE_OFFLINE", "1")
    assert read(hf_hub_download(REPO, "config.json", cache_dir=tmp_path)) == SMALL["config.json"]
    with pytest.raises(LocalEntryNotFoundError, match="sub/notes.txt"):
        hf_hub_download(REPO, "sub/notes.txt", cache_dir=tmp_path)


def test_missing_file_is_remembered(srv, tmp_path):
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "nope.bin", endpoint=srv.url, cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.bin", cache_dir=tmp_path, local_files_only=True)


def test_patterns_and_local_dir(srv, tmp_path):
    folder = snapshot_download(REPO, endpoint=srv.url, cache_dir=tmp_path / "c",
                               allow_patterns=["*.json", "sub/"])
    names = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
    assert names == ["config.json", "sub/notes.txt"]
    local = snapshot_download(REPO, endpoint=srv.url, local_dir=tmp_path / "out",
                              ignore_patterns="*.safetensors")
    assert read(f"{local}/sub/notes.txt") == SMALL["sub/notes.txt"]
    assert not Path(local, "model.safetensors").exists()
    meta = Path(local, ".cache/huggingface/download/config.json.metadata").read_text().split()
    assert len(meta[0]) == 40 and len(meta[1]) == 40  # commit, etag
    # huggingface_hub trusts our metadata: it finds the file up to date and keeps it.
    before = Path(local, "config.json").stat().st_mtime_ns
    hh.hf_hub_download(REPO, "config.json", endpoint=srv.url, local_dir=tmp_path / "out")
    assert Path(local, "config.json").stat().st_mtime_ns == before


def test_cut_download_resumes_with_a_range_request(srv, tmp_path):
    proxy = FaultyProxy(srv.port, "cut", after=3 * 1024 * 1024)
    try:
        path = hf_hub_download(REPO, "model.safetensors", endpoint=proxy.url, cache_dir=tmp_path)
    finally:
        proxy.close()
    assert proxy.faults == 1
    assert read(path) == BIG
    assert any(b"range: bytes=" in r.lower() for r in proxy.requests)


@pytest.mark.parametrize("name", ["model.safetensors", "sub/notes.txt"])
def test_corrupt_transfer_never_enters_the_cache(srv, tmp_path, name):
    proxy = FaultyProxy(srv.port, "corrupt", after=len(SMALL["sub/notes.txt"]) // 2 + 600)
    try:
        with pytest.raises(CorruptedDownloadError, match="corrupt"):
            hf_hub_download(REPO, name, endpoint=proxy.url, cache_dir=tmp_path)
    finally:
        proxy.close()
    assert proxy.faults >= 1
    blobs = list((tmp_path / "models--alice--dl" / "blobs").glob("*"))
    assert blobs == []  # neither a blob nor an .incomplete left behind
    assert not list((tmp_path / "models--alice--dl").glob("snapshots/*/" + name))
