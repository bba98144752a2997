"""Checks that a data folder is consistent, as it must be after any crash and a restart.

- every ref of every bare repository resolves to a commit whose whole tree is readable, and
  every LFS pointer in those trees names a stored object, or a file uploaded through Xet whose
  xorbs are all stored;
- `git fsck --full --strict` is clean on every repository (dangling objects are fine);
- no stale git lock file is left;
- the LFS store holds only complete objects (sha256 matches the name) and its temp area is
  empty;
- the SQL facts of main (sha) match the git ref.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from pathlib import Path

from dulwich.objects import Blob, Commit, Tag, Tree
from dulwich.repo import Repo

from cove.server.gitrepo import parse_lfs_pointer


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def repo_rows(data: Path) -> list[tuple[str, str, str, str | None]]:
    """(namespace, name, storage_key, sha) of every repository row."""
    with sqlite3.connect(data / "cove.db") as db:
        return db.execute("SELECT namespace, name, storage_key, sha FROM repositories").fetchall()


def git_dir(data: Path, repo_id: str) -> Path:
    namespace, name = repo_id.split("/")
    for ns, n, key, _ in repo_rows(data):
        if (ns, n) == (namespace, name):
            return data / "repos" / key[:2] / f"{key}.git"
    raise KeyError(repo_id)


def _walk_tree(repo: Repo, tree_id: bytes, prefix: str, lfs_oids: set[str]) -> int:
    tree = repo.object_store[tree_id]
    assert isinstance(tree, Tree), f"{prefix or '/'} is not a tree"
    n = 0
    for item in tree.iteritems():
        path = f"{prefix}/{item.path.decode()}" if prefix else item.path.decode()
        obj = repo.object_store[item.sha]
        if isinstance(obj, Tree):
            n += _walk_tree(repo, item.sha, path, lfs_oids)
        else:
            assert isinstance(obj, Blob), f"{path} is not a blob"
            data = obj.as_raw_string()
            pointer = parse_lfs_pointer(data)
            if pointer:
                lfs_oids.add(pointer[0])
            n += 1
    return n


def check_git_repo(path: Path, lfs_dir: Path) -> dict[str, str]:
    """Every ref readable down to each blob; fsck clean; no lock file. Returns the refs."""
    locks = [str(p.relative_to(path)) for p in path.rglob("*.lock")]
    assert not locks, f"stale lock files in {path}: {locks}"
    repo = Repo(str(path), bare=True)
    refs: dict[str, str] = {}
    lfs_oids: set[str] = set()
    try:
        for ref, sha in repo.get_refs().items():
            if ref == b"HEAD":
                continue
            obj = repo.object_store[sha]
            while isinstance(obj, Tag):
                obj = repo.object_store[obj.object[1]]
            assert isinstance(obj, Commit), f"{ref!r} does not point to a commit"
            _walk_tree(repo, obj.tree, "", lfs_oids)
            refs[ref.decode()] = obj.id.decode()
    finally:
        repo.close()
    assert "refs/heads/main" in refs, f"{path} has no main branch"
    for oid in lfs_oids:
        stored = lfs_dir / oid[:2] / oid[2:4] / oid
        assert stored.is_file() or xet_file_stored(lfs_dir.parent, oid), (
            f"LFS object {oid} referenced in {path} is missing"
        )
    fsck = subprocess.run(
        ["git", "-C", str(path), "fsck", "--full", "--strict", "--no-progress"],
        capture_output=True, text=True,
    )
    report = fsck.stdout + fsck.stderr
    assert fsck.returncode == 0, f"git fsck failed on {path}:\n{report}"
    problems = [
        line for line in report.splitlines()
        if line.strip() and not line.startswith(("dangling ", "Checking ", "notice: "))
    ]
    assert not problems, f"git fsck reported problems on {path}:\n{report}"
    return refs


def xet_file_stored(data: Path, oid: str) -> bool:
    """Whether the file of sha256 `oid` was uploaded through Xet, with all its xorbs stored."""
    with sqlite3.connect(data / "cove.db") as db:
        row = db.execute("select terms from xet_files where sha256 = ?", (oid,)).fetchone()
        if row is None:
            return False
        for xorb, *_ in json.loads(row[0]):
            found = db.execute("select object_oid from xet_xorbs where hash = ?", (xorb,)).fetchone()
            if found is None or not (data / "lfs" / found[0][:2] / found[0][2:4] / found[0]).is_file():
                return False
    return True


def check_lfs_store(lfs_dir: Path) -> None:
    """Only complete, verified objects under lfs/, and nothing in lfs/tmp."""
    tmp = lfs_dir / "tmp"
    leftovers = list(tmp.iterdir()) if tmp.exists() else []
    assert not leftovers, f"partial uploads left in {tmp}: {leftovers}"
    for p in lfs_dir.rglob("*"):
        if p.is_dir() or p.parent == tmp:
            continue
        rel = p.relative_to(lfs_dir).parts
        assert len(rel) == 3 and rel[0] == rel[2][:2] and rel[1] == rel[2][2:4], (
            f"unexpected file in the LFS store: {p}"
        )
        assert sha256_file(p) == rel[2], f"LFS object {p} does not match its name"


def check_data_dir(data: Path) -> dict[str, dict[str, str]]:
    """All of the above for a data folder; returns {repo_id: {ref: commit}}."""
    data = Path(data)
    lfs_dir = data / "lfs"
    rows = repo_rows(data)
    known = {key for _, _, key, _ in rows}
    on_disk = {p.name[:-4] for p in (data / "repos").glob("*/*.git") if p.parent.name != "staging"}
    assert on_disk == known, f"git folders {on_disk - known} without a row, rows {known - on_disk} without a folder"
    staging = data / "repos" / "staging"
    assert not staging.exists() or not any(staging.iterdir()), "staging area not cleaned"
    out = {}
    for namespace, name, key, sha in rows:
        refs = check_git_repo(data / "repos" / key[:2] / f"{key}.git", lfs_dir)
        assert sha == refs["refs/heads/main"], (
            f"SQL says main of {namespace}/{name} is {sha}, git says {refs['refs/heads/main']}"
        )
        out[f"{namespace}/{name}"] = refs
    check_lfs_store(lfs_dir)
    return out
