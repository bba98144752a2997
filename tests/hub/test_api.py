"""cove.hub's HubApi, uploads and login against a live `cove serve`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from cove.hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    DatasetFilter,
    DatasetInfo,
    GitRefs,
    HfApi,
    HubApi,
    HubHTTPError,
    LocalTokenNotFoundError,
    ModelFilter,
    ModelInfo,
    RemoteEntryNotFoundError,
    RepoFile,
    RepoFolder,
    RepositoryNotFoundError,
    RepoUrl,
    RevisionNotFoundError,
    SpaceInfo,
    hf_hub_download,
    login,
    logout,
    whoami,
)

BIG_SIZE = 20 * 1024 * 1024 + 321  # over the server's 10 MB LFS threshold, odd-sized

README = """---
license: apache-2.0
tags:
- cove-client
pipeline_tag: text-classification
library_name: transformers
---

# Client test model
"""


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def client(hub, token: str | None = None) -> HubApi:
    return HubApi(endpoint=hub.url, token=token if token is not None else False)


@pytest.fixture(scope="module")
def alice(hub) -> HubApi:
    return client(hub, hub.accounts.alice_write)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A model folder: a card, small files, nested folders, an empty file, a large file."""
    root = tmp_path_factory.mktemp("client-source")
    (root / "README.md").write_text(README)
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (root / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "notes.txt").write_text("nested notes\n")
    (root / "nested" / "deeper" / "leaf.json").write_text('{"leaf": true}\n')
    (root / "empty.txt").write_bytes(b"")
    (root / "weights.bin").write_bytes(os.urandom(4096))  # LFS by .gitattributes pattern
    (root / "big.dat").write_bytes(os.urandom(BIG_SIZE))  # LFS by size
    (root / "skip.log").write_text("not uploaded\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # never uploaded
    return root


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(folder).parts}


@pytest.fixture(scope="module")
def demo(hub, alice, source) -> dict:
    """alice/client-demo with the source folder (less *.log) uploaded in one commit."""
    url = alice.create_repo("alice/client-demo")
    info = alice.upload_folder(repo_id="alice/client-demo", folder_path=source,
                               ignore_patterns="*.log", commit_message="Upload the demo")
    return {"repo_id": url.repo_id, "commit": info.oid, "info": info}


# -- accounts -----------------------------------------------------------------------------


def test_whoami(hub, alice):
    me = alice.whoami()
    assert me["name"] == "alice"
    assert "acme" in [o["name"] for o in me["orgs"]]
    assert me["auth"]["accessToken"]["role"] == "write"
    assert client(hub, hub.accounts.alice_read).whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(ValueError):
        client(hub).whoami()
    with pytest.raises(HubHTTPError) as exc:
        client(hub, "hf_cove_not_a_token").whoami()
    assert exc.value.response.status_code == 401


def test_login_whoami_logout(hub, tmp_path, monkeypatch, capsys):
    for name in ("COVE_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "COVE_TOKEN_PATH",
                 "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COVE_ENDPOINT", hub.url)
    token = hub.accounts.alice_write
    path = tmp_path / "home" / "token"

    with pytest.raises(LocalTokenNotFoundError):
        whoami()
    with pytest.raises(HubHTTPError):
        login("hf_cove_wrong")
    assert not path.exists()  # a refused token is never saved

    login(token)
    assert path.read_text() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert whoami()["name"] == "alice"
    assert HubApi().whoami()["name"] == "alice"  # endpoint and token from the environment
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temp file left

    login(hub.accounts.bob_write, endpoint=hub.url)  # replaces the saved token
    assert whoami()["name"] == "bob"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    logout()
    assert not path.exists()
    with pytest.raises(LocalTokenNotFoundError):
        whoami()
    logout()  # logging out twice is harmless
    out = capsys.readouterr()
    for secret in (token, hub.accounts.bob_write):
        assert secret not in out.out and secret not in out.err
    assert "alice" in out.out


# -- repositories -------------------------------------------------------------------------


def test_create_repo_kinds(hub, alice):
    model = alice.create_repo("alice/c-model")
    assert isinstance(model, RepoUrl) and isinstance(model, str)
    assert (model.repo_id, model.repo_type, str(model)) == (
        "alice/c-model", "model", f"{hub.url}/alice/c-model")
    dataset = alice.create_repo("alice/c-data", repo_type="dataset")
    assert (dataset.repo_id, dataset.repo_type) == ("alice/c-data", "dataset")
    assert str(dataset) == f"{hub.url}/datasets/alice/c-data"
    space = alice.create_repo("alice/c-space", repo_type="space", space_sdk="gradio")
    assert (space.repo_id, space.repo_type) == ("alice/c-space", "space")
    with pytest.raises(ValueError, match="space_sdk"):
        alice.create_repo("alice/c-space-2", repo_type="space")
    # Without a namespace the repository goes to the token's user.
    assert alice.create_repo("c-bare").repo_id == "alice/c-bare"

    assert alice.list_repo_files("alice/c-model") == [".gitattributes"]
    assert isinstance(alice.repo_info("alice/c-data", repo_type="dataset"), DatasetInfo)
    sinfo = alice.space_info("alice/c-space")
    assert isinstance(sinfo, SpaceInfo) and sinfo.sdk == "gradio"
    assert isinstance(alice.dataset_info("alice/c-data"), DatasetInfo)


def test_create_repo_exist_ok_and_conflict(hub, alice):
    first = alice.create_repo("alice/c-twice")
    again = alice.create_repo("alice/c-twice", exist_ok=True)
    assert first == again and again.repo_id == "alice/c-twice"
    with pytest.raises(HubHTTPError) as exc:
        alice.create_repo("alice/c-twice")
    assert exc.value.response.status_code == 409


def test_delete_and_move_repo(hub, alice):
    alice.create_repo("alice/c-move-me")
    alice.upload_file(path_or_fileobj=b"moved\n", path_in_repo="a.txt", repo_id="alice/c-move-me")
    alice.move_repo("alice/c-move-me", "acme/c-moved")
    assert not alice.repo_exists("alice/c-move-me")
    assert "a.txt" in alice.list_repo_files("acme/c-moved")
    with pytest.raises(ValueError):
        alice.move_repo("no-namespace", "acme/x")

    alice.delete_repo("acme/c-moved")
    assert not alice.repo_exists("acme/c-moved")
    with pytest.raises(RepositoryNotFoundError):
        alice.delete_repo("acme/c-moved")
    alice.delete_repo("acme/c-moved", missing_ok=True)
    alice.create_repo("alice/c-data-del", repo_type="dataset")
    alice.delete_repo("alice/c-data-del", repo_type="dataset")
    assert not alice.repo_exists("alice/c-data-del", repo_type="dataset")


# -- uploads ------------------------------------------------------------------------------


def test_upload_folder_contents(hub, alice, demo, source, tmp_path):
    expected = {k: v for k, v in files_of(source).items() if not k.endswith(".log")}
    assert set(alice.list_repo_files("alice/client-demo")) == {".gitattributes", *expected}
    info = demo["info"]
    assert isinstance(info, CommitInfo) and isinstance(info, str)
    assert len(info.oid) == 40
    assert info.commit_url == str(info) == f"{hub.url}/alice/client-demo/commit/{info.oid}"
    assert info.commit_message == "Upload the demo"
    assert info.pr_url is None
    assert info.repo_url.repo_id == "alice/client-demo"
    # Every file comes back byte for byte, through both download paths.
    snapshot = Path(alice.snapshot_download("alice/client-demo", cache_dir=tmp_path / "c1"))
    assert snapshot.name == demo["commit"]
    assert files_of(snapshot) == {".gitattributes": files_of(snapshot)[".gitattributes"],
                                  **expected}
    for name in ("config.json", "nested/deeper/leaf.json", "empty.txt", "weights.bin"):
        path = alice.hf_hub_download("alice/client-demo", name, cache_dir=tmp_path / "c2")
        assert Path(path).read_bytes() == expected[name], name


def test_large_lfs_round_trip(hub, alice, demo, source, tmp_path):
    big = (source / "big.dat").read_bytes()
    info = alice.model_info("alice/client-demo", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["big.dat"].size == BIG_SIZE
    assert siblings["big.dat"].lfs.sha256 == hashlib.sha256(big).hexdigest()
    assert siblings["big.dat"].lfs.size == BIG_SIZE
    assert siblings["weights.bin"].lfs is not None  # *.bin is an LFS pattern
    cfg = (source / "config.json").read_bytes()
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(cfg)
    assert siblings["empty.txt"].size == 0 and siblings["empty.txt"].lfs is None
    path = hf_hub_download("alice/client-demo", "big.dat", endpoint=hub.url,
                           cache_dir=tmp_path / "cache", token=False)
    assert Path(path).read_bytes() == big

    # The same bytes from a file object, to another path: already stored, committed by oid.
    with open(source / "big.dat", "rb") as f:
        again = alice.upload_file(path_or_fileobj=f, path_in_repo="copy/big.dat",
                                  repo_id="alice/client-demo")
        assert f.tell() == 0
    entry = alice.get_paths_info("alice/client-demo", "copy/big.dat", revision=again.oid)[0]
    assert entry.lfs.sha256 == hashlib.sha256(big).hexdigest()
    alice.delete_folder("copy", "alice/client-demo")


def test_lfs_requests(hub, alice, monkeypatch):
    """Batch, then the bytes to the signed href without a token, then verify with one."""
    sent: list[httpx.Request] = []
    real_send = httpx.Client.send

    def record(self, request, **kwargs):
        sent.append(request)
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", record)
    alice.create_repo("alice/c-lfs")
    data = os.urandom(300_000)
    alice.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id="alice/c-lfs")
    batch = [r for r in sent if r.url.path.endswith(".git/info/lfs/objects/batch")]
    put = [r for r in sent if r.method == "PUT"]
    verify = [r for r in sent if r.url.path == "/api/lfs/verify"]
    assert len(batch) == len(put) == len(verify) == 1
    assert batch[0].headers["content-type"] == "application/vnd.git-lfs+json"
    body = json.loads(batch[0].content)
    assert body["operation"] == "upload" and body["transfers"] == ["basic"]
    assert body["objects"] == [{"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}]
    assert "authorization" not in put[0].headers
    assert put[0].headers["content-length"] == str(len(data))
    assert verify[0].headers["authorization"] == f"Bearer {hub.accounts.alice_write}"
    commit = [r for r in sent if "/commit/" in r.url.path][0]
    assert commit.headers["content-type"] == "application/x-ndjson"


def test_upload_folder_unchanged_makes_no_commit(hub, alice, demo, source):
    before = alice.list_repo_commits("alice/client-demo")
    head = before[0].commit_id
    again = alice.upload_folder(repo_id="alice/client-demo", folder_path=source,
                                ignore_patterns="*.log")
    assert again.oid == head
    assert again.commit_url.endswith(f"/commit/{head}")
    assert [c.commit_id for c in alice.list_repo_commits("alice/client-demo")] == \
        [c.commit_id for c in before]
    # The same for one unchanged file, regular or LFS.
    assert alice.upload_file(path_or_fileobj=source / "config.json", path_in_repo="config.json",
                             repo_id="alice/client-demo").oid == head
    assert alice.upload_file(path_or_fileobj=str(source / "weights.bin"),
                             path_in_repo="weights.bin", repo_id="alice/client-demo").oid == head


def test_upload_folder_patterns_and_deletes(hub, alice, tmp_path):
    alice.create_repo("alice/c-folder")
    local = tmp_path / "f"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("a\n")
    (local / "b.json").write_text("{}\n")
    (local / "sub" / "c.txt").write_text("c\n")
    alice.upload_folder(repo_id="alice/c-folder", folder_path=local, path_in_repo="data",
                        allow_patterns=["*.txt"], ignore_patterns="sub/")
    assert sorted(alice.list_repo_files("alice/c-folder")) == [".gitattributes", "data/a.txt"]
    alice.upload_folder(repo_id="alice/c-folder", folder_path=local, path_in_repo="data")
    assert sorted(alice.list_repo_files("alice/c-folder")) == [
        ".gitattributes", "data/a.txt", "data/b.json", "data/sub/c.txt"]

    (local / "a.txt").unlink()
    (local / "new.txt").write_text("new\n")
    alice.upload_folder(repo_id="alice/c-folder", folder_path=local, path_in_repo="data",
                        allow_patterns="new.txt", delete_patterns="*.txt")
    # Remote *.txt under data/ are deleted, except the file being uploaded; .json stays.
    assert sorted(alice.list_repo_files("alice/c-folder")) == [
        ".gitattributes", "data/b.json", "data/new.txt"]


def test_create_commit_operations(hub, alice):
    alice.create_repo("alice/c-commit")
    head = alice.model_info("alice/c-commit").sha
    info = alice.create_commit(
        "alice/c-commit",
        [CommitOperationAdd("one.txt", b"one\n"),
         CommitOperationAdd("dir/two.txt", io.BytesIO(b"two\n")),
         CommitOperationAdd("dir/sub/three.txt", b"three\n"),
         CommitOperationAdd("blob.safetensors", b"\x00\x01binary")],
        commit_message="Add files", commit_description="With a description.",
        parent_commit=head,
    )
    assert info.commit_description == "With a description."
    commits = alice.list_repo_commits("alice/c-commit")
    assert commits[0].commit_id == info.oid and commits[1].commit_id == head
    assert commits[0].title == "Add files" and commits[0].message == "With a description."
    assert commits[0].authors == ["alice"] and isinstance(commits[0].created_at, datetime)

    with pytest.raises(HubHTTPError) as exc:  # a stale parent is refused
        alice.create_commit("alice/c-commit", [CommitOperationAdd("x.txt", b"x")],
                            commit_message="stale", parent_commit=head)
    assert exc.value.response.status_code == 412

    alice.create_commit("alice/c-commit",
                        [CommitOperationDelete("one.txt"), CommitOperationDelete("dir/sub/")],
                        commit_message="Delete some")
    assert sorted(alice.list_repo_files("alice/c-commit")) == [
        ".gitattributes", "blob.safetensors", "dir/two.txt"]
    alice.delete_file("blob.safetensors", "alice/c-commit")
    alice.delete_folder("dir", "alice/c-commit")
    assert alice.list_repo_files("alice/c-commit") == [".gitattributes"]
    titles = [c.title for c in alice.list_repo_commits("alice/c-commit")]
    assert titles[:2] == ["Delete folder dir with cove", "Delete blob.safetensors with cove"]

    with pytest.raises(ValueError):
        CommitOperationAdd("../escape.txt", b"x")
    with pytest.raises(ValueError):
        CommitOperationAdd(".git/config", b"x")
    with pytest.raises(ValueError):
        CommitOperationAdd("a.txt", "/no/such/file")


def test_invalid_readme_metadata_is_refused_before_upload(hub, alice):
    alice.create_repo("alice/c-badcard")
    with pytest.raises(ValueError, match="README.md"):
        alice.upload_file(path_or_fileobj=b"---\nkey: [unclosed\n---\n", path_in_repo="README.md",
                          repo_id="alice/c-badcard")
    assert alice.list_repo_files("alice/c-badcard") == [".gitattributes"]


# -- files --------------------------------------------------------------------------------


def test_list_repo_tree_and_paths_info(hub, alice, demo, source):
    top = {e.path: e for e in alice.list_repo_tree("alice/client-demo")}
    assert isinstance(top["nested"], RepoFolder) and len(top["nested"].tree_id) == 40
    assert isinstance(top["config.json"], RepoFile)
    assert "nested/notes.txt" not in top
    nested = [e.path for e in alice.list_repo_tree("alice/client-demo", "nested")]
    assert sorted(nested) == ["nested/deeper", "nested/notes.txt"]
    deep = {e.path: e for e in alice.list_repo_tree("alice/client-demo", "nested",
                                                     recursive=True)}
    assert isinstance(deep["nested/deeper/leaf.json"], RepoFile)
    leaf = (source / "nested" / "deeper" / "leaf.json").read_bytes()
    assert deep["nested/deeper/leaf.json"].size == len(leaf)
    assert deep["nested/deeper/leaf.json"].blob_id == git_blob_sha1(leaf)
    big = {e.path: e for e in alice.list_repo_tree("alice/client-demo", recursive=True)}["big.dat"]
    assert big.lfs.size == BIG_SIZE and big.size == BIG_SIZE

    infos = alice.get_paths_info("alice/client-demo", ["config.json", "nested", "missing.txt"])
    assert {type(i).__name__: i.path for i in infos} == {
        "RepoFile": "config.json", "RepoFolder": "nested"}
    with pytest.raises(RemoteEntryNotFoundError):
        list(alice.list_repo_tree("alice/client-demo", "no-such-folder"))


def test_exists(hub, alice, demo):
    assert alice.repo_exists("alice/client-demo")
    assert not alice.repo_exists("alice/nope")
    assert not alice.repo_exists("alice/client-demo", repo_type="dataset")
    assert alice.file_exists("alice/client-demo", "nested/notes.txt")
    assert not alice.file_exists("alice/client-demo", "nested/none.txt")
    assert not alice.file_exists("alice/nope", "x")
    assert not alice.file_exists("alice/client-demo", "config.json", revision="no-branch")
    assert alice.revision_exists("alice/client-demo", demo["commit"])
    assert not alice.revision_exists("alice/client-demo", "no-branch")


def test_model_info_fields(hub, alice, demo):
    info = alice.model_info("alice/client-demo")
    assert isinstance(info, ModelInfo)
    head = alice.list_repo_commits("alice/client-demo")[0].commit_id
    assert (info.id, info.author, info.sha, info.private) == (
        "alice/client-demo", "alice", head, False)
    assert info.pipeline_tag == "text-classification"
    assert info.library_name == "transformers"
    assert "cove-client" in info.tags
    assert info.card_data["license"] == "apache-2.0"
    assert isinstance(info.created_at, datetime) and info.created_at.tzinfo is not None
    assert isinstance(info.last_modified, datetime)
    assert info.gated is False and info.disabled is False
    assert info.downloads >= 0 and info.likes == 0
    assert {s.rfilename for s in info.siblings} >= {"config.json", "big.dat"}
    assert all(s.size is None for s in info.siblings)  # sizes only with files_metadata
    first = alice.list_repo_commits("alice/client-demo")[-1].commit_id
    old = alice.repo_info("alice/client-demo", revision=first)
    assert old.sha == first and [s.rfilename for s in old.siblings] == [".gitattributes"]


# -- refs and history ---------------------------------------------------------------------


def test_branches_and_tags(hub, alice):
    alice.create_repo("alice/c-refs")
    first = alice.model_info("alice/c-refs").sha
    alice.create_branch("alice/c-refs", branch="dev")
    alice.create_branch("alice/c-refs", branch="dev", exist_ok=True)
    with pytest.raises(HubHTTPError) as exc:
        alice.create_branch("alice/c-refs", branch="dev")
    assert exc.value.response.status_code == 409
    on_dev = alice.upload_file(path_or_fileobj=b"dev\n", path_in_repo="dev.txt",
                               repo_id="alice/c-refs", revision="dev")
    assert alice.list_repo_files("alice/c-refs") == [".gitattributes"]
    assert "dev.txt" in alice.list_repo_files("alice/c-refs", revision="dev")
    alice.create_branch("alice/c-refs", branch="feature/x", revision=first)
    alice.upload_file(path_or_fileobj=b"x\n", path_in_repo="x.txt", repo_id="alice/c-refs",
                      revision="feature/x")  # a branch name with a slash, percent-encoded

    alice.create_tag("alice/c-refs", tag="v1", revision="dev", tag_message="First release")
    alice.create_tag("alice/c-refs", tag="v0")
    alice.create_tag("alice/c-refs", tag="v0", exist_ok=True)
    with pytest.raises(HubHTTPError):
        alice.create_tag("alice/c-refs", tag="v0")

    refs = alice.list_repo_refs("alice/c-refs")
    assert isinstance(refs, GitRefs)
    branches = {b.name: b for b in refs.branches}
    assert set(branches) == {"main", "dev", "feature/x"}
    assert branches["dev"].target_commit == on_dev.oid
    assert branches["dev"].ref == "refs/heads/dev"
    tags = {t.name: t.target_commit for t in refs.tags}
    assert tags == {"v0": first, "v1": on_dev.oid}
    assert refs.converts == [] and refs.pull_requests is None
    assert alice.model_info("alice/c-refs", revision="v1").sha == on_dev.oid
    assert alice.list_repo_refs("alice/c-refs", include_pull_requests=True).pull_requests == []

    alice.delete_tag("alice/c-refs", tag="v0")
    alice.delete_branch("alice/c-refs", branch="feature/x")
    refs = alice.list_repo_refs("alice/c-refs")
    assert {t.name for t in refs.tags} == {"v1"}
    assert {b.name for b in refs.branches} == {"main", "dev"}
    with pytest.raises(RevisionNotFoundError):
        alice.delete_branch("alice/c-refs", branch="feature/x")
    with pytest.raises(RevisionNotFoundError):
        alice.list_repo_files("alice/c-refs", revision="feature/x")
    history = alice.list_repo_commits("alice/c-refs", revision="dev")
    assert [c.commit_id for c in history] == [on_dev.oid, first]


# -- listings -----------------------------------------------------------------------------


def test_list_models(hub, alice, demo):
    alice.create_repo("acme/c-listed", private=True)
    alice.upload_file(path_or_fileobj=b"---\npipeline_tag: fill-mask\ntags: [cove-client]\n---\n",
                      path_in_repo="README.md", repo_id="acme/c-listed")
    ids = [m.id for m in alice.list_models(search="client-demo")]
    assert ids == ["alice/client-demo"]
    mine = [m.id for m in alice.list_models(author="alice")]
    assert "alice/client-demo" in mine and "acme/c-listed" not in mine
    tagged = {m.id for m in alice.list_models(filter="cove-client")}
    assert tagged == {"alice/client-demo", "acme/c-listed"}
    assert {m.id for m in alice.list_models(filter=["cove-client", "fill-mask"])} == {
        "acme/c-listed"}
    assert [m.id for m in alice.list_models(pipeline_tag="fill-mask")] == ["acme/c-listed"]
    assert [m.id for m in alice.list_models(task="fill-mask")] == ["acme/c-listed"]
    assert [m.id for m in alice.list_models(filter=ModelFilter(task="text-classification",
                                                               author="alice"))] == [
        "alice/client-demo"]
    assert [m.id for m in alice.list_models(filter=ModelFilter(library="transformers",
                                                               tags="cove-client"))] == [
        "alice/client-demo"]
    # The private repository is hidden from anonymous callers and from bob.
    assert "acme/c-listed" not in {m.id for m in client(hub).list_models(filter="cove-client")}
    bob = client(hub, hub.accounts.bob_write)
    assert "acme/c-listed" not in {m.id for m in bob.list_models(filter="cove-client")}

    listed = next(iter(alice.list_models(search="client-demo")))
    assert isinstance(listed, ModelInfo) and listed.card_data is None and listed.siblings is None
    full = next(iter(alice.list_models(search="client-demo", full=True, cardData=True)))
    assert full.card_data["license"] == "apache-2.0" and full.siblings

    everyone = [m.id for m in alice.list_models()]
    assert len(everyone) >= 5
    assert [m.id for m in alice.list_models(limit=2)] == everyone[:2]
    newest = [m.id for m in alice.list_models(sort="created_at")]
    oldest = [m.id for m in alice.list_models(sort="createdAt", direction=1)]
    assert newest == oldest[::-1]


def test_listing_follows_link_pages(hub, alice, demo):
    """A generator: pages of one item are fetched one at a time along the Link header."""
    pages = alice._paginate(f"{hub.url}/api/models", {"limit": 1}, None)
    first = next(pages)
    rest = list(pages)
    assert [first["id"], *[m["id"] for m in rest]] == [m.id for m in alice.list_models()]


def test_list_datasets_and_spaces(hub, alice):
    alice.create_repo("alice/c-ds", repo_type="dataset")
    alice.upload_file(path_or_fileobj=b"---\ntask_categories: [translation]\nlanguage: [fr]\n---\n",
                      path_in_repo="README.md", repo_id="alice/c-ds", repo_type="dataset")
    found = list(alice.list_datasets(search="c-ds"))
    assert [d.id for d in found] == ["alice/c-ds"] and isinstance(found[0], DatasetInfo)
    assert [d.id for d in alice.list_datasets(task_categories="translation")] == ["alice/c-ds"]
    assert [d.id for d in alice.list_datasets(filter="language:fr")] == ["alice/c-ds"]
    assert [d.id for d in alice.list_datasets(filter=DatasetFilter(language="fr",
                                                                   author="alice"))] == [
        "alice/c-ds"]
    assert list(alice.list_datasets(filter=DatasetFilter(language="de"))) == []
    alice.create_repo("alice/c-static", repo_type="space", space_sdk="static")
    spaces = list(alice.list_spaces(author="alice", search="c-static"))
    assert [s.id for s in spaces] == ["alice/c-static"] and spaces[0].sdk == "static"


# -- errors -------------------------------------------------------------------------------


def test_private_repo_errors(hub, alice, tmp_path):
    alice.create_repo("alice/c-private", private=True)
    alice.upload_file(path_or_fileobj=b"secret\n", path_in_repo="s.txt",
                      repo_id="alice/c-private")
    bob = client(hub, hub.accounts.bob_write)
    for who in (client(hub), bob):
        with pytest.raises(RepositoryNotFoundError):
            who.model_info("alice/c-private")
        with pytest.raises(RepositoryNotFoundError):
            who.list_repo_files("alice/c-private")
        with pytest.raises(RepositoryNotFoundError):
            who.hf_hub_download("alice/c-private", "s.txt", cache_dir=tmp_path)
        assert not who.repo_exists("alice/c-private")
    with pytest.raises(RepositoryNotFoundError):
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/c-private")
    # The owner's read token reads it.
    reader = client(hub, hub.accounts.alice_read)
    assert reader.model_info("alice/c-private").private is True
    path = reader.hf_hub_download("alice/c-private", "s.txt", cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"secret\n"


def test_missing_entry_and_revision(hub, alice, demo, tmp_path):
    with pytest.raises(RemoteEntryNotFoundError):
        alice.hf_hub_download("alice/client-demo", "nope.txt", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        alice.model_info("alice/client-demo", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        alice.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt",
                          repo_id="alice/client-demo", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        alice.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/none")


def test_read_token_cannot_write(hub, alice, demo):
    reader = client(hub, hub.accounts.alice_read)
    with pytest.raises(HubHTTPError) as exc:
        reader.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt",
                           repo_id="alice/client-demo")
    assert exc.value.response.status_code == 403
    with pytest.raises(HubHTTPError) as exc:
        reader.create_repo("alice/c-by-reader")
    assert exc.value.response.status_code == 403
    with pytest.raises(HubHTTPError) as exc:
        reader.create_branch("alice/client-demo", branch="nope")
    assert exc.value.response.status_code == 403
    assert HfApi is HubApi
