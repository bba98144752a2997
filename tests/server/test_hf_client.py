"""End to end: the real `huggingface_hub` client against a live `cove serve`.

Every call goes through `HfApi(endpoint=server.url, token=...)` or the download functions with
`endpoint=`, so nothing depends on HF_ENDPOINT having been set before the import.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

# The client's own LFS PUT passes a file object as `data=`, which its HTTP library deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

BIG_SIZE = 20 * 1024 * 1024 + 123  # over the 10 MB threshold, not a multiple of any chunk

README = """---
license: mit
tags:
- cove-test
- tiny
pipeline_tag: text-classification
library_name: transformers
datasets:
- alice/tiny-data
---

# Demo model

A model card for the end-to-end tests.
"""

CONFIG = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def api(server, token: str | None = None) -> HfApi:
    return HfApi(endpoint=server.url, token=token if token is not None else False)


@pytest.fixture(scope="module")
def alice(server) -> HfApi:
    return api(server, server.accounts.alice_write)


@pytest.fixture(scope="module")
def bob(server) -> HfApi:
    return api(server, server.accounts.bob_write)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hf-cache"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A model folder: small files, a card, a nested folder and one large random file."""
    root = tmp_path_factory.mktemp("source")
    (root / "README.md").write_text(README)
    (root / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (root / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\nworld\n")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "notes.txt").write_text("nested notes\n")
    (root / "nested" / "deeper" / "leaf.json").write_text('{"leaf": true}\n')
    (root / "empty.txt").write_bytes(b"")
    (root / "big.dat").write_bytes(os.urandom(BIG_SIZE))
    return root


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


@pytest.fixture(scope="module")
def demo(server, alice, source) -> dict:
    """alice/demo with the source folder uploaded: the repo id and the upload's commit."""
    url = alice.create_repo("alice/demo")
    assert url.repo_id == "alice/demo"
    info = alice.upload_folder(repo_id="alice/demo", folder_path=source,
                               commit_message="Upload the demo model")
    return {"repo_id": "alice/demo", "commit": info.oid}


# -- repositories ------------------------------------------------------------------------


def test_create_repo_kinds(server, alice):
    model = alice.create_repo("alice/kinds-model")
    assert model.repo_id == "alice/kinds-model"
    assert model.repo_type == "model"
    assert str(model) == f"{server.url}/alice/kinds-model"

    dataset = alice.create_repo("alice/kinds-data", repo_type="dataset")
    assert dataset.repo_id == "alice/kinds-data"
    assert dataset.repo_type == "dataset"
    assert str(dataset) == f"{server.url}/datasets/alice/kinds-data"

    space = alice.create_repo("alice/kinds-space", repo_type="space", space_sdk="gradio")
    assert space.repo_type == "space"
    assert str(space) == f"{server.url}/spaces/alice/kinds-space"
    sinfo = alice.space_info("alice/kinds-space")
    assert sinfo.id == "alice/kinds-space"
    assert sinfo.sdk == "gradio"

    # A new repository already has a commit (.gitattributes), like on the Hub.
    for repo_id, rtype in [("alice/kinds-model", "model"), ("alice/kinds-data", "dataset"),
                           ("alice/kinds-space", "space")]:
        assert alice.list_repo_files(repo_id, repo_type=rtype) == [".gitattributes"]
        assert len(alice.repo_info(repo_id, repo_type=rtype).sha) == 40

    # An organisation alice belongs to.
    org = alice.create_repo("acme/shared", private=True)
    assert org.repo_id == "acme/shared"
    assert alice.model_info("acme/shared").private is True


def test_create_repo_private(server, alice):
    alice.create_repo("alice/secret", private=True)
    info = alice.model_info("alice/secret")
    assert info.private is True
    assert info.id == "alice/secret"
    listed = [m.id for m in alice.list_models(author="alice")]
    assert "alice/secret" in listed
    # Hidden from anonymous listings and from bob.
    assert "alice/secret" not in [m.id for m in api(server).list_models(author="alice")]
    assert "alice/secret" not in [m.id for m in api(server, server.accounts.bob_write)
                                  .list_models(author="alice")]


def test_create_repo_exist_ok(server, alice):
    first = alice.create_repo("alice/twice", exist_ok=True)
    second = alice.create_repo("alice/twice", exist_ok=True)
    assert first == second == f"{server.url}/alice/twice"
    assert second.repo_id == "alice/twice"
    with pytest.raises(HfHubHTTPError) as exc:
        alice.create_repo("alice/twice")
    assert exc.value.response.status_code == 409


# -- upload and download -----------------------------------------------------------------


def test_upload_folder_files(server, alice, demo, source):
    files = alice.list_repo_files("alice/demo")
    expected = {".gitattributes", *files_of(source)}
    assert set(files) == expected
    commits = alice.list_repo_commits("alice/demo")
    assert commits[0].commit_id == demo["commit"]
    assert commits[0].title == "Upload the demo model"


def test_lfs_and_siblings(server, alice, demo, source):
    big = (source / "big.dat").read_bytes()
    info = alice.model_info("alice/demo", files_metadata=True)
    assert info.sha == demo["commit"]
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["big.dat"].size == BIG_SIZE
    assert siblings["big.dat"].lfs is not None
    assert siblings["big.dat"].lfs.sha256 == hashlib.sha256(big).hexdigest()
    assert siblings["big.dat"].lfs.size == BIG_SIZE
    assert 100 < siblings["big.dat"].lfs.pointer_size < 200
    cfg = (source / "config.json").read_bytes()
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].size == len(cfg)
    assert siblings["config.json"].blob_id == git_blob_sha1(cfg)
    assert siblings["empty.txt"].size == 0
    assert siblings["empty.txt"].lfs is None


def test_hf_hub_download_identical(server, demo, source, cache):
    for name in ["config.json", "nested/deeper/leaf.json", "big.dat", "empty.txt"]:
        path = hf_hub_download("alice/demo", name, endpoint=server.url, cache_dir=cache,
                               token=False)
        assert Path(path).read_bytes() == (source / name).read_bytes(), name
        assert f"snapshots/{demo['commit']}/{name}" in Path(path).as_posix()
    # The cache names LFS blobs by sha256 and git files by their blob sha1.
    blobs = {p.name for p in (cache / "models--alice--demo" / "blobs").iterdir()}
    assert hashlib.sha256((source / "big.dat").read_bytes()).hexdigest() in blobs
    assert git_blob_sha1((source / "config.json").read_bytes()) in blobs
    assert (cache / "models--alice--demo" / "refs" / "main").read_text() == demo["commit"]


def test_hf_hub_download_local_dir(server, demo, source, tmp_path):
    path = hf_hub_download("alice/demo", "nested/notes.txt", endpoint=server.url,
                           local_dir=tmp_path / "out", token=False)
    assert Path(path) == tmp_path / "out" / "nested" / "notes.txt"
    assert Path(path).read_bytes() == (source / "nested" / "notes.txt").read_bytes()


def test_snapshot_download_identical(server, demo, source, cache):
    folder = snapshot_download("alice/demo", endpoint=server.url, cache_dir=cache, token=False)
    assert Path(folder).name == demo["commit"]
    got = files_of(Path(folder))
    assert got.pop(".gitattributes").startswith(b"*.7z filter=lfs")
    assert got == files_of(source)


def test_snapshot_download_allow_patterns(server, demo, source, tmp_path):
    folder = snapshot_download("alice/demo", endpoint=server.url, local_dir=tmp_path / "cfg",
                               allow_patterns=["*.json"], token=False)
    got = files_of(Path(folder))
    assert set(got) == {"config.json", "nested/deeper/leaf.json"}
    assert got["config.json"] == (source / "config.json").read_bytes()
    folder = snapshot_download("alice/demo", endpoint=server.url, local_dir=tmp_path / "nest",
                               allow_patterns="nested/*", token=False)
    assert set(files_of(Path(folder))) == {"nested/notes.txt", "nested/deeper/leaf.json"}


def test_hf_file_system_ranges(server, demo, source):
    """fsspec reads fetch byte ranges of the resolve URL: they need correct 206 answers."""
    from huggingface_hub import HfFileSystem

    big = (source / "big.dat").read_bytes()
    fs = HfFileSystem(endpoint=server.url, token=False, skip_instance_cache=True)
    assert fs.size("alice/demo/big.dat") == BIG_SIZE
    with fs.open("alice/demo/big.dat", "rb", block_size=64 * 1024) as f:
        f.seek(BIG_SIZE - 1000)
        assert f.read(600) == big[-1000:-400]
        f.seek(12345)
        assert f.read(10) == big[12345:12355]
    assert fs.cat_file("alice/demo/big.dat", start=5, end=25) == big[5:25]
    assert fs.read_text("alice/demo/nested/notes.txt") == "nested notes\n"
    assert sorted(fs.ls("alice/demo/nested", detail=False)) == [
        "alice/demo/nested/deeper", "alice/demo/nested/notes.txt"
    ]
    assert fs.exists("alice/demo/nested/deeper/leaf.json")
    assert not fs.exists("alice/demo/nested/missing.json")


# -- info, listings, trees ---------------------------------------------------------------


def test_model_info_card(server, alice, demo):
    info = api(server).model_info("alice/demo")
    assert info.id == "alice/demo"
    assert info.author == "alice"
    assert info.sha == demo["commit"]
    assert info.private is False
    assert info.pipeline_tag == "text-classification"
    assert info.library_name == "transformers"
    assert info.card_data is not None
    assert info.card_data.license == "mit"
    assert info.card_data.tags == ["cove-test", "tiny"]
    assert info.card_data.datasets == ["alice/tiny-data"]
    for tag in ["cove-test", "tiny", "license:mit", "transformers", "text-classification",
                "dataset:alice/tiny-data"]:
        assert tag in info.tags, tag
    assert {s.rfilename for s in info.siblings} >= {"README.md", "config.json", "big.dat"}
    assert info.last_modified is not None and info.created_at is not None


def test_dataset_info(server, alice, tmp_path):
    alice.create_repo("alice/tiny-data", repo_type="dataset")
    (tmp_path / "README.md").write_text(
        "---\nlicense: apache-2.0\nlanguage:\n- en\ntask_categories:\n- text-classification\n"
        "tags:\n- cove-data\n---\n# Tiny data\n"
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,label\nhello,1\nbye,0\n")
    commit = alice.upload_folder(repo_id="alice/tiny-data", repo_type="dataset",
                                 folder_path=tmp_path)
    info = api(server).dataset_info("alice/tiny-data")
    assert info.id == "alice/tiny-data"
    assert info.sha == commit.oid
    assert info.card_data.license == "apache-2.0"
    assert info.card_data.language == ["en"]
    for tag in ["cove-data", "license:apache-2.0", "language:en",
                "task_categories:text-classification"]:
        assert tag in info.tags, tag
    assert {s.rfilename for s in info.siblings} == {".gitattributes", "README.md",
                                                   "data/train.csv"}
    path = hf_hub_download("alice/tiny-data", "data/train.csv", repo_type="dataset",
                           endpoint=server.url, cache_dir=tmp_path / "cache", token=False)
    assert Path(path).read_text() == "text,label\nhello,1\nbye,0\n"
    found = [d.id for d in api(server).list_datasets(author="alice", filter="license:apache-2.0")]
    assert found == ["alice/tiny-data"]


def test_list_models(server, alice, demo):
    anon = api(server)
    ids = [m.id for m in anon.list_models(author="alice")]
    assert "alice/demo" in ids
    assert all(i.startswith("alice/") for i in ids)
    assert [m.id for m in anon.list_models(search="demo")] == ["alice/demo"]
    assert [m.id for m in anon.list_models(filter="license:mit")] == ["alice/demo"]
    assert [m.id for m in anon.list_models(filter="cove-test")] == ["alice/demo"]
    assert [m.id for m in anon.list_models(filter=["cove-test", "license:apache-2.0"])] == []
    assert [m.id for m in anon.list_models(pipeline_tag="text-classification")] == ["alice/demo"]
    assert [m.id for m in anon.list_models(trained_dataset="alice/tiny-data")] == ["alice/demo"]
    assert len(list(anon.list_models(limit=2))) == 2
    assert [m.id for m in anon.list_models(search="nothing-matches-this")] == []
    # cardData on request.
    [m] = list(anon.list_models(search="alice/demo", cardData=True))
    assert m.card_data is not None and m.card_data.license == "mit"


def test_list_models_sort_last_modified(server, bob):
    bob.create_repo("bob/older")
    bob.create_repo("bob/newer")
    time.sleep(0.01)
    bob.upload_file(path_or_fileobj=b"touched", path_in_repo="touch.txt", repo_id="bob/older")
    ids = [m.id for m in bob.list_models(author="bob", sort="lastModified")]
    assert ids.index("bob/older") < ids.index("bob/newer")
    ids = [m.id for m in bob.list_models(author="bob", sort="lastModified", limit=1)]
    assert ids == ["bob/older"]


def test_list_repo_files_and_tree(server, alice, demo, source):
    anon = api(server)
    listed = anon.list_repo_files("alice/demo")
    assert sorted(listed) == sorted([".gitattributes", *files_of(source)])

    top = list(anon.list_repo_tree("alice/demo"))
    by_path = {e.path: e for e in top}
    assert set(by_path) == {".gitattributes", "README.md", "config.json", "vocab.txt",
                            "empty.txt", "big.dat", "nested"}
    assert isinstance(by_path["nested"], RepoFolder)
    assert isinstance(by_path["config.json"], RepoFile)
    cfg = (source / "config.json").read_bytes()
    assert by_path["config.json"].size == len(cfg)
    assert by_path["config.json"].blob_id == git_blob_sha1(cfg)
    assert by_path["config.json"].lfs is None
    big = by_path["big.dat"]
    assert big.size == BIG_SIZE
    assert big.lfs.sha256 == hashlib.sha256((source / "big.dat").read_bytes()).hexdigest()

    everything = list(anon.list_repo_tree("alice/demo", recursive=True))
    paths = {e.path for e in everything}
    assert {"nested", "nested/deeper", "nested/notes.txt", "nested/deeper/leaf.json"} <= paths
    assert {e.path for e in everything if isinstance(e, RepoFile)} == {
        ".gitattributes", *files_of(source)
    }

    sub = list(anon.list_repo_tree("alice/demo", path_in_repo="nested"))
    assert {e.path for e in sub} == {"nested/notes.txt", "nested/deeper"}
    sub = list(anon.list_repo_tree("alice/demo", path_in_repo="nested", recursive=True))
    assert {e.path for e in sub} == {"nested/notes.txt", "nested/deeper",
                                     "nested/deeper/leaf.json"}
    with pytest.raises(EntryNotFoundError):
        list(anon.list_repo_tree("alice/demo", path_in_repo="no/such/folder"))


def test_get_paths_info(server, demo, source):
    infos = api(server).get_paths_info(
        "alice/demo", ["config.json", "nested", "big.dat", "missing.txt"]
    )
    by_path = {e.path: e for e in infos}
    assert set(by_path) == {"config.json", "nested", "big.dat"}
    assert isinstance(by_path["nested"], RepoFolder)
    assert by_path["config.json"].blob_id == git_blob_sha1((source / "config.json").read_bytes())
    assert by_path["big.dat"].lfs.size == BIG_SIZE


# -- refs, history, revisions ------------------------------------------------------------


def test_branches_tags_and_history(server, alice, tmp_path):
    repo = "alice/history"
    alice.create_repo(repo)
    first = alice.upload_file(path_or_fileobj=b"v1\n", path_in_repo="config.json", repo_id=repo,
                              commit_message="First version").oid
    alice.create_tag(repo, tag="v1")
    alice.create_tag(repo, tag="v1-annotated", tag_message="the first release")
    alice.create_branch(repo, branch="dev")
    with pytest.raises(HfHubHTTPError) as exc:
        alice.create_branch(repo, branch="dev")
    assert exc.value.response.status_code == 409
    alice.create_branch(repo, branch="dev", exist_ok=True)

    second = alice.upload_file(path_or_fileobj=b"v2\n", path_in_repo="config.json",
                               repo_id=repo, commit_message="Second version").oid
    on_dev = alice.upload_file(path_or_fileobj=b"dev only\n", path_in_repo="dev.txt",
                               repo_id=repo, revision="dev", commit_message="Dev work").oid
    assert len({first, second, on_dev}) == 3

    refs = alice.list_repo_refs(repo)
    branches = {b.name: b.target_commit for b in refs.branches}
    assert branches == {"main": second, "dev": on_dev}
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": first, "v1-annotated": first}
    assert refs.converts == []
    assert all(b.ref == f"refs/heads/{b.name}" for b in refs.branches)

    commits = alice.list_repo_commits(repo)
    assert [c.commit_id for c in commits][:2] == [second, first]
    assert [c.title for c in commits] == ["Second version", "First version", "initial commit"]
    assert commits[0].authors == ["alice"]
    dev_commits = alice.list_repo_commits(repo, revision="dev")
    assert [c.title for c in dev_commits] == ["Dev work", "First version", "initial commit"]

    # main is unchanged by the commit to dev.
    assert "dev.txt" not in alice.list_repo_files(repo)
    assert "dev.txt" in alice.list_repo_files(repo, revision="dev")
    assert alice.model_info(repo).sha == second
    assert alice.model_info(repo, revision="dev").sha == on_dev

    cache = tmp_path / "cache"

    def read(revision: str | None, name: str = "config.json") -> bytes:
        return Path(hf_hub_download(repo, name, revision=revision, endpoint=server.url,
                                    cache_dir=cache, token=False)).read_bytes()

    assert read(None) == b"v2\n"
    assert read("main") == b"v2\n"
    assert read(first) == b"v1\n"  # a full commit id
    assert read("v1") == b"v1\n"
    assert read("v1-annotated") == b"v1\n"
    assert read("dev") == b"v1\n"
    assert read("dev", "dev.txt") == b"dev only\n"
    assert (cache / "models--alice--history" / "refs" / "v1").read_text() == first
    folder = snapshot_download(repo, revision="v1", endpoint=server.url, cache_dir=cache,
                               token=False)
    assert Path(folder).name == first
    assert set(files_of(Path(folder))) == {".gitattributes", "config.json"}

    # Deleting a file is a commit of its own; the old revision still has the file.
    deleted = alice.delete_file("config.json", repo, commit_message="Remove config").oid
    assert alice.list_repo_files(repo) == [".gitattributes"]
    assert alice.list_repo_commits(repo)[0].commit_id == deleted
    assert alice.list_repo_commits(repo)[0].title == "Remove config"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo, "config.json", endpoint=server.url, cache_dir=tmp_path / "c2",
                        token=False)
    assert read(second) == b"v2\n"

    alice.delete_branch(repo, branch="dev")
    alice.delete_tag(repo, tag="v1")
    refs = alice.list_repo_refs(repo)
    assert [b.name for b in refs.branches] == ["main"]
    assert [t.name for t in refs.tags] == ["v1-annotated"]
    with pytest.raises(RevisionNotFoundError):
        alice.model_info(repo, revision="dev")


def test_upload_file_parent_commit(server, alice):
    repo = "alice/parent"
    alice.create_repo(repo)
    base = alice.model_info(repo).sha
    alice.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=repo,
                      parent_commit=base)
    with pytest.raises(HfHubHTTPError) as exc:
        alice.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id=repo,
                          parent_commit=base)
    assert exc.value.response.status_code == 412
    assert alice.list_repo_files(repo) == [".gitattributes", "a.txt"]


def test_slash_branch_and_unicode_paths(server, alice, tmp_path):
    """Revisions with '/' travel as %2F; paths keep their slashes but quote the rest."""
    repo = "alice/odd-names"
    alice.create_repo(repo)
    odd = "dir with space/ünï cødé+%#?.txt"
    alice.upload_file(path_or_fileobj=b"unicode\n", path_in_repo=odd, repo_id=repo)
    alice.create_branch(repo, branch="feature/x")
    on_branch = alice.upload_file(path_or_fileobj=b"fx", path_in_repo="fx.txt", repo_id=repo,
                                  revision="feature/x").oid
    assert {b.name for b in alice.list_repo_refs(repo).branches} == {"main", "feature/x"}
    assert alice.model_info(repo, revision="feature/x").sha == on_branch
    assert [c.commit_id for c in alice.list_repo_commits(repo, revision="feature/x")][0] == on_branch
    assert "fx.txt" not in alice.list_repo_files(repo)
    assert [e.path for e in alice.list_repo_tree(repo, path_in_repo="dir with space")] == [odd]
    cache = tmp_path / "cache"
    path = hf_hub_download(repo, odd, endpoint=server.url, cache_dir=cache, token=False)
    assert Path(path).read_bytes() == b"unicode\n"
    path = hf_hub_download(repo, "fx.txt", revision="feature/x", endpoint=server.url,
                           cache_dir=cache, token=False)
    assert Path(path).read_bytes() == b"fx"
    folder = snapshot_download(repo, revision="feature/x", endpoint=server.url, cache_dir=cache,
                               token=False)
    assert Path(folder).name == on_branch
    assert set(files_of(Path(folder))) == {".gitattributes", odd, "fx.txt"}
    assert (cache / "models--alice--odd-names" / "refs" / "feature" / "x").read_text() == on_branch


def test_create_commit_operations(server, alice, tmp_path):
    """Several operations in one commit, copies (regular and LFS) and folder deletes."""
    repo = "alice/operations"
    alice.create_repo(repo)
    weights = os.urandom(3000)
    alice.create_commit(repo, commit_message="Add files", operations=[
        CommitOperationAdd("a.txt", b"alpha"),
        CommitOperationAdd("w.safetensors", weights),  # LFS by .gitattributes
        CommitOperationAdd("old/one.txt", b"1"),
        CommitOperationAdd("old/sub/two.txt", b"2"),
    ])
    info = alice.create_commit(repo, commit_message="Copy and prune", operations=[
        CommitOperationCopy("a.txt", "copies/a.txt"),
        CommitOperationCopy("w.safetensors", "copies/w.safetensors"),
        CommitOperationDelete("old/"),
    ])
    assert sorted(alice.list_repo_files(repo)) == [
        ".gitattributes", "a.txt", "copies/a.txt", "copies/w.safetensors", "w.safetensors"
    ]
    entries = {e.path: e for e in alice.get_paths_info(repo, ["copies/w.safetensors",
                                                              "copies/a.txt"])}
    assert entries["copies/w.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert entries["copies/a.txt"].blob_id == git_blob_sha1(b"alpha")
    path = hf_hub_download(repo, "copies/w.safetensors", revision=info.oid, endpoint=server.url,
                           cache_dir=tmp_path, token=False)
    assert Path(path).read_bytes() == weights
    assert alice.list_repo_commits(repo)[0].title == "Copy and prune"


# -- errors ------------------------------------------------------------------------------


def test_private_repo_not_found(server, alice, bob, tmp_path):
    repo = "alice/private-model"
    alice.create_repo(repo, private=True)
    alice.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo)
    for client in (api(server), bob):
        with pytest.raises(RepositoryNotFoundError):
            client.model_info(repo)
        with pytest.raises(RepositoryNotFoundError):
            client.list_repo_files(repo)
        with pytest.raises(RepositoryNotFoundError):
            client.list_repo_refs(repo)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo, "config.json", endpoint=server.url, cache_dir=tmp_path, token=False)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo, "config.json", endpoint=server.url, cache_dir=tmp_path,
                        token=server.accounts.bob_write)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(repo, endpoint=server.url, cache_dir=tmp_path,
                          token=server.accounts.bob_write)
    # bob cannot write into alice's namespace either (it is not revealed that it exists).
    with pytest.raises(RepositoryNotFoundError):
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    # And a public repo of alice's is readable but not writable by bob.
    with pytest.raises(HfHubHTTPError) as exc:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/demo")
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        bob.create_repo("acme/not-bobs")
    assert exc.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError):
        api(server).model_info("alice/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        api(server).model_info("no-namespace-model")


def test_entry_not_found(server, demo, tmp_path):
    assert issubclass(RemoteEntryNotFoundError, EntryNotFoundError)
    with pytest.raises(RemoteEntryNotFoundError) as exc:
        hf_hub_download("alice/demo", "missing.bin", endpoint=server.url, cache_dir=tmp_path,
                        token=False)
    assert exc.value.response.status_code == 404
    assert exc.value.response.headers["X-Error-Code"] == "EntryNotFound"
    # The miss is cached against the commit, as the Hub's X-Repo-Commit makes possible.
    assert (tmp_path / "models--alice--demo" / ".no_exist" / demo["commit"] / "missing.bin").exists()
    assert not api(server).file_exists("alice/demo", "missing.bin")
    assert api(server).file_exists("alice/demo", "nested/notes.txt")


def test_revision_not_found(server, demo, tmp_path):
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/demo", "config.json", revision="no-such-branch",
                        endpoint=server.url, cache_dir=tmp_path, token=False)
    with pytest.raises(RevisionNotFoundError):
        api(server).model_info("alice/demo", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api(server).list_repo_files("alice/demo", revision="0" * 40)
    assert not api(server).revision_exists("alice/demo", "no-such-branch")
    assert api(server).revision_exists("alice/demo", "main")


def test_read_token(server, alice, tmp_path):
    reader = api(server, server.accounts.alice_read)
    repo = "alice/read-token"
    alice.create_repo(repo, private=True)
    alice.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id=repo)

    assert reader.whoami()["name"] == "alice"
    assert reader.whoami()["auth"]["accessToken"]["role"] == "read"
    # It reads alice's private repositories ...
    assert reader.model_info(repo).private is True
    path = hf_hub_download(repo, "config.json", endpoint=server.url, cache_dir=tmp_path,
                           token=server.accounts.alice_read)
    assert Path(path).read_bytes() == b'{"a": 1}'
    assert repo in [m.id for m in reader.list_models(author="alice")]
    # ... and the organisation's.
    assert reader.model_info("acme/shared").private is True
    # ... but writes nothing.
    with pytest.raises(HfHubHTTPError) as exc:
        reader.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        reader.create_repo("alice/from-read-token")
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        reader.create_branch(repo, branch="nope")
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        reader.delete_repo(repo)
    assert exc.value.response.status_code == 403
    assert alice.list_repo_files(repo) == [".gitattributes", "config.json"]
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info("alice/from-read-token")


def test_bad_token(server):
    with pytest.raises(HfHubHTTPError) as exc:
        api(server, "hf_not_a_real_token").whoami()
    assert exc.value.response.status_code == 401


# -- downloads ---------------------------------------------------------------------------


def test_downloads_counter(server, bob, tmp_path):
    # Created in this order, the default listing order is quiet first.
    for name in ("bob/quiet", "bob/popular"):
        bob.create_repo(name)
        bob.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=name)
        bob.upload_file(path_or_fileobj=b"hi", path_in_repo="notes.txt", repo_id=name)
    assert bob.model_info("bob/popular").downloads == 0

    hf_hub_download("bob/popular", "notes.txt", endpoint=server.url, cache_dir=tmp_path,
                    token=False)
    assert bob.model_info("bob/popular").downloads == 0  # not config.json nor weights
    hf_hub_download("bob/popular", "config.json", endpoint=server.url, cache_dir=tmp_path,
                    token=False)
    assert bob.model_info("bob/popular").downloads == 1
    # Counted once per client in a window.
    hf_hub_download("bob/popular", "config.json", endpoint=server.url,
                    cache_dir=tmp_path / "again", token=False, force_download=True)
    assert bob.model_info("bob/popular").downloads == 1
    assert bob.model_info("bob/quiet").downloads == 0

    ids = [m.id for m in bob.list_models(author="bob", search="bob/")]
    assert ids.index("bob/quiet") < ids.index("bob/popular")
    ranked = list(bob.list_models(author="bob", sort="downloads"))
    assert ranked[0].id == "bob/popular"
    assert ranked[0].downloads == 1
    assert [m.id for m in bob.list_models(author="bob", sort="downloads", limit=1)] == [
        "bob/popular"
    ]


# -- delete and move ---------------------------------------------------------------------


def test_delete_repo(server, alice, tmp_path):
    alice.create_repo("alice/doomed")
    alice.upload_file(path_or_fileobj=b"bye", path_in_repo="f.txt", repo_id="alice/doomed")
    alice.delete_repo("alice/doomed")
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info("alice/doomed")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/doomed", "f.txt", endpoint=server.url, cache_dir=tmp_path,
                        token=False)
    with pytest.raises(RepositoryNotFoundError):
        alice.delete_repo("alice/doomed")
    alice.delete_repo("alice/doomed", missing_ok=True)
    # The name is free again, and the new repository starts empty.
    alice.create_repo("alice/doomed")
    assert alice.list_repo_files("alice/doomed") == [".gitattributes"]

    alice.create_repo("alice/doomed-data", repo_type="dataset")
    alice.delete_repo("alice/doomed-data", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        alice.dataset_info("alice/doomed-data")


def test_move_repo(server, alice, tmp_path):
    alice.create_repo("alice/before-move")
    sha = alice.upload_file(path_or_fileobj=b"moved content", path_in_repo="f.txt",
                            repo_id="alice/before-move").oid
    alice.move_repo("alice/before-move", "alice/after-move")
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info("alice/before-move")
    info = alice.model_info("alice/after-move")
    assert info.id == "alice/after-move"
    assert info.sha == sha
    path = hf_hub_download("alice/after-move", "f.txt", endpoint=server.url,
                           cache_dir=tmp_path, token=False)
    assert Path(path).read_bytes() == b"moved content"
    # Into an organisation alice belongs to.
    alice.move_repo("alice/after-move", "acme/moved")
    assert alice.model_info("acme/moved").sha == sha
    # Not onto an existing repository, not into bob's namespace.
    alice.create_repo("alice/occupied")
    with pytest.raises(HfHubHTTPError) as exc:
        alice.move_repo("acme/moved", "alice/occupied")
    assert exc.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError) as exc:
        alice.move_repo("acme/moved", "bob/stolen")
    assert exc.value.response.status_code == 403
    assert alice.model_info("acme/moved").sha == sha
