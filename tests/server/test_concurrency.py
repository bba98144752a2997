"""Two clients committing to the same branch at once.

Without parentCommit every commit lands, one after the other (linear history, no file lost).
With a stale parentCommit the server refuses with 412 PreconditionFailed, and nothing is lost.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from cove.server.gitrepo import GitRepo, parse_lfs_pointer
from tests.server.consistency import check_data_dir, git_dir

pytestmark = pytest.mark.timeout(180)

COMMITS = 20  # per client


def _content(client: str, i: int) -> tuple[str, bytes]:
    """A distinct file per (client, commit); every fifth one goes to LFS."""
    if i % 5 == 4:
        return f"{client}/w{i}.bin", hashlib.sha256(f"{client}{i}".encode()).digest() * 512
    return f"{client}/f{i}.txt", f"client {client} commit {i}\n".encode()


def _history(data, repo_id: str) -> list[list[str]]:
    """`git rev-list --parents main`: each commit followed by its parents, newest first."""
    out = subprocess.run(
        ["git", "-C", str(git_dir(data, repo_id)), "rev-list", "--parents", "main"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [line.split() for line in out.splitlines()]


def _check_all_present(server, repo_id: str, clients: list[str], extra: int = 0) -> None:
    """Every client's every file is on main with its content; history linear, one commit each."""
    git = GitRepo(git_dir(server.data, repo_id))
    try:
        head = git.resolve("main")
        files = {e.path: git.read_blob(e.oid) for e in git.files(head)}
    finally:
        git.close()
    for client in clients:
        for i in range(COMMITS):
            path, content = _content(client, i)
            assert path in files, f"{path} was lost"
            pointer = parse_lfs_pointer(files[path])
            if pointer:
                assert pointer == (hashlib.sha256(content).hexdigest(), len(content))
            else:
                assert files[path] == content
    history = _history(server.data, repo_id)
    assert all(len(line) <= 2 for line in history), "history is not linear"
    assert len(history) == 1 + len(clients) * COMMITS + extra
    assert history[0][0] == head
    api = HfApi(endpoint=server.url, token=server.accounts.alice_write)
    assert api.model_info(repo_id).sha == head
    titles = [c.title for c in api.list_repo_commits(repo_id)]
    for client in clients:
        for i in range(COMMITS):
            assert f"{client} {i}" in titles
    check_data_dir(server.data)


def _run_clients(clients: list[str], work, barriers: tuple[threading.Barrier, ...]) -> None:
    errors: list[BaseException] = []

    def run(client: str) -> None:
        try:
            work(client)
        except BaseException as e:  # reported below
            errors.append(e)
            for b in barriers:  # the other client must not wait for this one
                b.abort()

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors


def test_concurrent_commits_without_parent_all_land(server):
    repo_id = "alice/concurrent"
    HfApi(endpoint=server.url, token=server.accounts.alice_write).create_repo(repo_id)
    clients = ["a", "b"]
    start = threading.Barrier(len(clients))

    def work(client: str) -> None:
        api = HfApi(endpoint=server.url, token=server.accounts.alice_write)
        start.wait(30)
        for i in range(COMMITS):
            path, content = _content(client, i)
            api.create_commit(
                repo_id, [CommitOperationAdd(path_in_repo=path, path_or_fileobj=content)],
                commit_message=f"{client} {i}",
            )

    _run_clients(clients, work, (start,))
    _check_all_present(server, repo_id, clients)


def test_stale_parent_commit_is_refused(server):
    repo_id = "alice/stale-parent"
    api = HfApi(endpoint=server.url, token=server.accounts.alice_write)
    api.create_repo(repo_id)
    base = api.model_info(repo_id).sha
    first = api.create_commit(
        repo_id, [CommitOperationAdd(path_in_repo="first.txt", path_or_fileobj=b"1\n")],
        commit_message="first", parent_commit=base,
    )
    with pytest.raises(HfHubHTTPError) as caught:
        api.create_commit(
            repo_id, [CommitOperationAdd(path_in_repo="second.txt", path_or_fileobj=b"2\n")],
            commit_message="second", parent_commit=base,
        )
    response = caught.value.response
    assert response.status_code == 412
    assert response.headers["X-Error-Code"] == "PreconditionFailed"
    assert "stale" in response.headers["X-Error-Message"]
    assert "stale" in str(caught.value)
    info = api.model_info(repo_id)
    assert info.sha == first.oid
    assert sorted(s.rfilename for s in info.siblings) == [".gitattributes", "first.txt"]
    # With the fresh parent the same commit goes through, and nothing was lost.
    api.create_commit(
        repo_id, [CommitOperationAdd(path_in_repo="second.txt", path_or_fileobj=b"2\n")],
        commit_message="second", parent_commit=first.oid,
    )
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "first.txt", "second.txt"]
    check_data_dir(server.data)


def test_concurrent_commits_with_same_parent_one_conflicts(server):
    """Each round both clients read the head, then both commit on it at once: exactly one
    wins, the other gets 412 and succeeds on retry with the new head."""
    repo_id = "alice/racing-parent"
    HfApi(endpoint=server.url, token=server.accounts.alice_write).create_repo(repo_id)
    clients = ["a", "b"]
    read_head = threading.Barrier(len(clients))
    go = threading.Barrier(len(clients))
    conflicts: dict[str, int] = {c: 0 for c in clients}

    def work(client: str) -> None:
        api = HfApi(endpoint=server.url, token=server.accounts.alice_write)
        for i in range(COMMITS):
            path, content = _content(client, i)
            op = CommitOperationAdd(path_in_repo=path, path_or_fileobj=content)
            read_head.wait(60)  # both finished the previous round
            parent = api.model_info(repo_id).sha
            go.wait(60)  # both hold the same head; nobody committed since
            for _attempt in range(5):
                try:
                    api.create_commit(repo_id, [op], commit_message=f"{client} {i}",
                                      parent_commit=parent)
                    break
                except HfHubHTTPError as e:
                    if e.response is None or e.response.status_code != 412:
                        raise
                    assert e.response.headers.get("X-Error-Code") == "PreconditionFailed"
                    conflicts[client] += 1
                    parent = api.model_info(repo_id).sha
            else:
                raise AssertionError(f"client {client} could not commit {i}")

    _run_clients(clients, work, (read_head, go))
    # Exactly one loser per round.
    assert sum(conflicts.values()) == COMMITS, conflicts
    _check_all_present(server, repo_id, clients)
