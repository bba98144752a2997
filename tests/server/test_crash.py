"""Crash safety: SIGKILL the server mid-upload and mid-commit, restart it, find everything sound.

After each restart on the same data folder (see tests/server/consistency.py): every ref
readable down to its blobs, `git fsck --full --strict` clean, no stale lock, no partial LFS
object, SQL in line with git; and what was interrupted can simply be done again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

from cove.server.gitrepo import GitRepo, git_blob_sha
from tests.server.conftest import seed_accounts
from tests.server.consistency import check_data_dir, git_dir, repo_rows, sha256_file
from tests.server.live import LiveServer, free_port

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
BIG = 200 * MiB


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A data folder with accounts and tokens, copied for each test (seeding is slow)."""
    data = tmp_path_factory.mktemp("seed")
    return data, seed_accounts(data)


class Crashable:
    """A live server that can be SIGKILLed and restarted on the same data folder and port."""

    def __init__(self, data: Path, accounts) -> None:
        self.data = data
        self.accounts = accounts
        self.port = free_port()
        self.live = LiveServer(data, port=self.port).start()

    @property
    def url(self) -> str:
        return self.live.url

    def api(self) -> HfApi:
        return HfApi(endpoint=self.url, token=self.accounts.alice_write)

    def kill(self) -> None:
        self.live.kill()

    def restart(self) -> None:
        self.live.kill()
        self.live = LiveServer(self.data, port=self.port).start()


@pytest.fixture
def hub(seeded, tmp_path):
    template, accounts = seeded
    data = tmp_path / "data"
    shutil.copytree(template, data, ignore=shutil.ignore_patterns("server.log"))
    server = Crashable(data, accounts)
    yield server
    server.live.stop()


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _partial_upload(data: Path, at_least: int) -> Path | None:
    tmp = data / "lfs" / "tmp"
    for p in tmp.iterdir() if tmp.exists() else []:
        try:
            if p.stat().st_size >= at_least:
                return p
        except FileNotFoundError:
            pass
    return None


def _big_chunks() -> tuple[list[bytes], str]:
    """200 MiB as 1 MiB chunks (distinct, cheap to make) and their sha256."""
    base = os.urandom(MiB)
    chunks = [i.to_bytes(8, "big") + base[8:] for i in range(BIG // MiB)]
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return chunks, h.hexdigest()


def _retry_upload_and_compare(hub: Crashable, repo_id: str, chunks: list[bytes], oid: str,
                              tmp_path: Path) -> None:
    """The same upload_file succeeds after the crash and the download is byte-identical."""
    local = tmp_path / "weights.bin"
    with open(local, "wb") as f:
        for c in chunks:
            f.write(c)
    api = hub.api()
    api.upload_file(path_or_fileobj=str(local), path_in_repo="weights.bin", repo_id=repo_id)
    local.unlink()
    got = hf_hub_download(repo_id, "weights.bin", endpoint=hub.url, token=hub.accounts.alice_write,
                          cache_dir=tmp_path / "cache")
    assert os.path.getsize(got) == BIG
    assert sha256_file(Path(got)) == oid
    info = api.model_info(repo_id, files_metadata=True)
    sibling = {s.rfilename: s for s in info.siblings}["weights.bin"]
    assert sibling.lfs is not None and sibling.lfs.sha256 == oid and sibling.size == BIG
    check_data_dir(hub.data)


def test_kill_during_raw_lfs_upload(hub, tmp_path):
    """SIGKILL while a 200 MiB body flows to the signed upload URL: nothing partial survives."""
    repo_id = "alice/big-raw"
    api = hub.api()
    api.create_repo(repo_id)
    chunks, oid = _big_chunks()
    batch = httpx.post(
        f"{hub.url}/{repo_id}.git/info/lfs/objects/batch",
        headers={"Authorization": f"Bearer {hub.accounts.alice_write}",
                 "Content-Type": "application/vnd.git-lfs+json",
                 "Accept": "application/vnd.git-lfs+json"},
        content=json.dumps({"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
                            "ref": {"name": "refs/heads/main"},
                            "objects": [{"oid": oid, "size": BIG}]}),
    )
    assert batch.status_code == 200, batch.text
    href = batch.json()["objects"][0]["actions"]["upload"]["href"]

    flowing, stop = threading.Event(), threading.Event()
    outcome: dict = {}

    def body():
        for i, c in enumerate(chunks):
            if i <= 40:
                yield c
                continue
            flowing.set()
            for at in range(0, len(c), 64 * 1024):  # keep bytes flowing, slowly, until the kill
                if stop.wait(0.01):
                    return
                yield c[at:at + 64 * 1024]

    def put():
        try:
            outcome["response"] = httpx.put(href, content=body(), timeout=60)
        except httpx.HTTPError as e:
            outcome["error"] = e

    thread = threading.Thread(target=put, daemon=True)
    thread.start()
    try:
        assert flowing.wait(30), "the upload did not start"
        partial = _wait_for(lambda: _partial_upload(hub.data, 16 * MiB), 30, "a partial upload")
        # While bytes arrive the object does not exist for anyone.
        verify = httpx.post(f"{hub.url}/api/lfs/verify", json={"oid": oid, "size": BIG},
                            headers={"Authorization": f"Bearer {hub.accounts.alice_write}"})
        assert verify.status_code == 404
        hub.kill()
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert "response" not in outcome, "the upload finished before the kill"
    final = hub.data / "lfs" / oid[:2] / oid[2:4] / oid
    assert not final.exists(), "a partial upload became visible"
    assert partial.exists() and partial.stat().st_size < BIG  # left behind by the crash

    hub.restart()
    check_data_dir(hub.data)
    assert not final.exists()
    # The same object is asked for again: the server knows it has nothing.
    verify = httpx.post(f"{hub.url}/api/lfs/verify", json={"oid": oid, "size": BIG},
                        headers={"Authorization": f"Bearer {hub.accounts.alice_write}"})
    assert verify.status_code == 404
    _retry_upload_and_compare(hub, repo_id, chunks, oid, tmp_path)


_UPLOAD_SCRIPT = """
import os, sys
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
from huggingface_hub import HfApi
endpoint, token, repo_id, path = sys.argv[1:5]
HfApi(endpoint=endpoint, token=token).upload_file(
    path_or_fileobj=path, path_in_repo="weights.bin", repo_id=repo_id)
print("uploaded")
"""


def test_kill_during_hf_upload_file(hub, tmp_path):
    """huggingface_hub's upload_file in another process, the server SIGKILLed mid-transfer."""
    repo_id = "alice/big-hf"
    hub.api().create_repo(repo_id)
    chunks, oid = _big_chunks()
    local = tmp_path / "client" / "weights.bin"
    local.parent.mkdir()
    with open(local, "wb") as f:
        for c in chunks:
            f.write(c)
    client = subprocess.Popen(
        [sys.executable, "-c", _UPLOAD_SCRIPT, hub.url, hub.accounts.alice_write, repo_id,
         str(local)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ},
    )
    try:
        partial = _wait_for(lambda: _partial_upload(hub.data, 8 * MiB) or client.poll() is not None,
                            60, "a partial upload")
        hub.kill()
    finally:
        # The client would retry with backoff; a crashed client is part of the scenario.
        if client.poll() is None:
            client.kill()
        out = client.communicate(timeout=30)[0].decode(errors="replace")
    assert isinstance(partial, Path), f"the upload finished before the kill:\n{out}"
    assert "uploaded" not in out
    final = hub.data / "lfs" / oid[:2] / oid[2:4] / oid
    assert not final.exists()

    hub.restart()
    check_data_dir(hub.data)
    assert hub.api().list_repo_files(repo_id) == [".gitattributes"]
    _retry_upload_and_compare(hub, repo_id, chunks, oid, tmp_path)


# -- commits -------------------------------------------------------------------------------
N_FILES = 1000


def _batch_ops(k: int) -> tuple[list[CommitOperationAdd], dict[str, bytes]]:
    """A heavy commit: many small regular files, then two LFS files; distinct per `k`."""
    files = {
        f"batch{k}/d{i % 40}/f{i}.txt": f"batch {k} file {i}\n".encode() * (1 + i % 7)
        for i in range(N_FILES)
    }
    rnd = random.Random(k)
    for j in range(2):
        files[f"batch{k}/weights{j}.bin"] = rnd.randbytes(64 * 1024)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=c) for p, c in files.items()]
    return ops, files


def _object_exists(git: Path, sha: str) -> bool:
    return (git / "objects" / sha[:2] / sha[2:]).exists()


def _main_files(data: Path, repo_id: str) -> dict[str, bytes]:
    git = GitRepo(git_dir(data, repo_id))
    try:
        head = git.resolve("main")
        return {e.path: git.read_blob(e.oid) for e in git.files(head)}
    finally:
        git.close()


def _check_batch(data: Path, repo_id: str, files: dict[str, bytes]) -> bool:
    """Whether the batch's commit landed; a commit is all or nothing."""
    present = _main_files(data, repo_id)
    landed = [p for p in files if p in present]
    assert len(landed) in (0, len(files)), (
        f"a commit landed in part: {len(landed)} of {len(files)} files"
    )
    for p in landed:
        if p.endswith(".bin"):
            assert hashlib.sha256(files[p]).hexdigest() in present[p].decode()
        else:
            assert present[p] == files[p]
    return bool(landed)


def _trigger(kind: str, at: float, git: Path, files: dict[str, bytes], before: str,
             deadline: float):
    """When to kill: after a given blob of the commit hits the disk (mid write_commit), as
    soon as the branch moves (between the git ref and SQL), or at a time (any phase)."""
    if kind == "blob":
        regular = [p for p in files if not p.endswith(".bin")]
        blob = git_blob_sha(files[regular[min(int(at * len(regular)), len(regular) - 1)]])
        return lambda: _object_exists(git, blob)
    if kind == "ref":
        def moved() -> bool:
            try:
                return (git / "refs" / "heads" / "main").read_text().strip() != before
            except FileNotFoundError:
                return False
        return moved
    return lambda: time.monotonic() >= deadline


def test_kill_during_commits(hub):
    """SIGKILL at many moments of heavy commits; after each restart all is sound and the
    interrupted commit either landed whole or can be made again."""
    repo_id = "alice/many"
    api = hub.api()
    api.create_repo(repo_id)
    git = git_dir(hub.data, repo_id)
    rnd = random.Random(1234)

    # A first commit measures how long one takes; the timed kills spread over that span.
    ops, files = _batch_ops(0)
    started = time.monotonic()
    api.create_commit(repo_id, ops, commit_message="batch 0")
    duration = time.monotonic() - started
    assert _check_batch(hub.data, repo_id, files)

    triggers: list[tuple[str, float]] = [
        ("blob", 0.05), ("blob", 0.5), ("blob", 1.0), ("ref", 0.0),
        ("time", rnd.uniform(0.1, 0.6)), ("time", rnd.uniform(0.6, 1.0)),
    ]
    summary = []
    for k, (kind, at) in enumerate(triggers, start=1):
        ops, files = _batch_ops(k)
        before = api.model_info(repo_id).sha
        outcome: dict = {}

        def work(ops=ops, k=k, outcome=outcome):
            try:
                outcome["commit"] = api.create_commit(repo_id, ops, commit_message=f"batch {k}")
            except Exception as e:  # the server died under it
                outcome["error"] = e

        fired = _trigger(kind, at, git, files, before, time.monotonic() + at * duration)
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        _wait_for(lambda t=thread, f=fired: f() or not t.is_alive(), 60, f"trigger {kind} {at}")
        hub.kill()
        hub.restart()  # the client may retry against the new server: that is fine
        thread.join(90)
        assert not thread.is_alive(), "the client hung"

        check_data_dir(hub.data)
        landed = _check_batch(hub.data, repo_id, files)
        summary.append((kind, at, landed, "error" in outcome))
        if not landed:
            api.create_commit(repo_id, ops, commit_message=f"batch {k} (again)")
            assert _check_batch(hub.data, repo_id, files)
            check_data_dir(hub.data)

    # Everything of every batch is there, history is linear and SQL follows git.
    present = _main_files(hub.data, repo_id)
    for k in range(len(triggers) + 1):
        assert f"batch{k}/d0/f0.txt" in present, summary
    history = subprocess.run(["git", "-C", str(git), "rev-list", "--parents", "main"],
                             check=True, capture_output=True, text=True).stdout.splitlines()
    assert all(len(line.split()) <= 2 for line in history), "history is not linear"
    assert api.model_info(repo_id).sha == history[0].split()[0]
    # At least some kills must have hit a commit in flight, or the test proves nothing.
    assert any(not landed for _, _, landed, _ in summary), summary


# -- deterministic recovery of SQL from git ------------------------------------------------
CARD_OLD = "---\nlicense: mit\ntags:\n- before-crash\npipeline_tag: text-classification\n---\n# Old\n"
CARD_NEW = "---\nlicense: apache-2.0\ntags:\n- after-crash\npipeline_tag: translation\n---\n# New\n"


def _sql_row(data: Path, repo_id: str) -> dict:
    namespace, name = repo_id.split("/")
    with sqlite3.connect(data / "cove.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute(
            "SELECT * FROM repositories WHERE namespace = ? AND name = ?", (namespace, name)
        ).fetchone()
        tags = [t for (t,) in db.execute(
            "SELECT tag FROM repo_tags WHERE repo_id = ?", (row["id"],))]
    out = dict(row)
    out["card_data"] = json.loads(out["card_data"]) if out["card_data"] else None
    out["tags"] = json.loads(out["tags"]) if out["tags"] else []
    out["repo_tags"] = sorted(tags)
    return out


def _assert_recovered(hub: Crashable, repo_id: str, head: str) -> None:
    row = _sql_row(hub.data, repo_id)
    assert row["sha"] == head
    assert row["card_data"]["license"] == "apache-2.0"
    assert "after-crash" in row["tags"] and "before-crash" not in row["tags"]
    assert "after-crash" in row["repo_tags"]
    assert row["pipeline_tag"] == "translation"
    api = hub.api()
    info = api.model_info(repo_id)
    assert info.sha == head
    assert info.card_data["license"] == "apache-2.0"
    # Listings read SQL only: they must follow git too.
    listed = list(api.list_models(author="alice", filter="after-crash"))
    assert [m.id for m in listed] == [repo_id]
    assert listed[0].sha in (None, head)
    assert not list(api.list_models(author="alice", filter="before-crash"))
    assert [m.id for m in api.list_models(author="alice", pipeline_tag="translation")] == [repo_id]
    check_data_dir(hub.data)


def test_recover_git_ahead_of_sql(hub):
    """Killed between the git ref update and the SQL update: git moved, SQL did not."""
    repo_id = "alice/card"
    api = hub.api()
    api.create_repo(repo_id)
    old = api.upload_file(path_or_fileobj=CARD_OLD.encode(), path_in_repo="README.md",
                          repo_id=repo_id).oid
    hub.kill()
    # What Hub.commit does up to the ref update, without the SQL part that follows.
    git = GitRepo(git_dir(hub.data, repo_id))
    try:
        head = git.write_commit("main", [("README.md", CARD_NEW.encode())], [], "card",
                                "alice <alice@example.com>", old)
    finally:
        git.close()
    assert _sql_row(hub.data, repo_id)["sha"] == old  # the state a crash there leaves
    hub.restart()
    _assert_recovered(hub, repo_id, head)


def test_recover_sql_rolled_back(hub):
    """SQL holds an older main (sha, card, tags) than git: recovery brings it back in line."""
    repo_id = "alice/card2"
    api = hub.api()
    api.create_repo(repo_id)
    initial = api.model_info(repo_id).sha
    head = api.upload_file(path_or_fileobj=CARD_NEW.encode(), path_in_repo="README.md",
                           repo_id=repo_id).oid
    assert _sql_row(hub.data, repo_id)["sha"] == head
    hub.kill()
    with sqlite3.connect(hub.data / "cove.db") as db:
        (rid,) = db.execute("SELECT id FROM repositories WHERE name = 'card2'").fetchone()
        db.execute("UPDATE repositories SET sha = ?, card_data = NULL, tags = '[]', "
                   "pipeline_tag = NULL WHERE id = ?", (initial, rid))
        db.execute("DELETE FROM repo_tags WHERE repo_id = ?", (rid,))
    hub.restart()
    _assert_recovered(hub, repo_id, head)


def test_recover_removes_leftovers(hub):
    """Stale git locks, staging folders, orphan repositories and partial uploads are mended."""
    repo_id = "alice/leftovers"
    api = hub.api()
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"one\n", path_in_repo="a.txt", repo_id=repo_id)
    hub.kill()
    git = git_dir(hub.data, repo_id)
    # Locks as a SIGKILL leaves them: on the branch (mid CAS) and on a loose object of the
    # very content the next commit will write.
    (git / "refs" / "heads" / "main.lock").write_text("0" * 40 + "\n")
    blob = git_blob_sha(b"two\n")
    (git / "objects" / blob[:2]).mkdir(exist_ok=True)
    (git / "objects" / blob[:2] / f"{blob[2:]}.lock").write_bytes(b"partial")
    staging = hub.data / "repos" / "staging" / "deadbeef.git"
    staging.mkdir(parents=True)
    (staging / "HEAD").write_text("ref: refs/heads/main\n")
    orphan = hub.data / "repos" / "ff" / ("ff" * 16 + ".git")
    orphan.mkdir(parents=True)
    (orphan / "HEAD").write_text("ref: refs/heads/main\n")
    tmp = hub.data / "lfs" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / ("0" * 64 + ".partial")).write_bytes(b"x" * 1000)
    hub.restart()
    check_data_dir(hub.data)
    assert not staging.exists() and not orphan.exists()
    api.upload_file(path_or_fileobj=b"two\n", path_in_repo="b.txt", repo_id=repo_id)
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "a.txt", "b.txt"]
    assert [r[1] for r in repo_rows(hub.data)] == ["leftovers"]
    check_data_dir(hub.data)
