"""Repositories as bare git repositories (dulwich), with LFS pointers for large files.

Writes are serialized per repository by the caller (see RepoStore) and published with a
compare-and-swap on the branch ref: objects are written first, the ref moves last, so a crash
at any moment leaves at worst unreachable objects, never a ref to a missing object.
"""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dulwich.diff_tree import tree_changes
from dulwich.errors import NotCommitError
from dulwich.object_store import commit_tree_changes
from dulwich.objects import Blob, Commit, Tag, Tree
from dulwich.repo import Repo

LFS_SPEC = b"version https://git-lfs.github.com/spec/v1\n"
_POINTER = re.compile(
    rb"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n$"
)
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
FILE_MODE = 0o100644
ZERO_SHA = b"0" * 40


@dataclass(frozen=True)
class LfsInfo:
    oid: str
    size: int
    pointer_size: int


@dataclass(frozen=True)
class Entry:
    """A file or directory of a commit's tree."""

    path: str
    type: str  # "file" | "directory"
    oid: str  # git object id (blob or tree)
    size: int = 0  # the file's real size (the LFS object's size for a pointer)
    lfs: LfsInfo | None = None


def lfs_pointer(oid: str, size: int) -> bytes:
    return LFS_SPEC + f"oid sha256:{oid}\nsize {size}\n".encode()


def parse_lfs_pointer(data: bytes) -> tuple[str, int] | None:
    if len(data) > 200 or not data.startswith(LFS_SPEC):
        return None
    m = _POINTER.match(data)
    return (m.group(1).decode(), int(m.group(2))) if m else None


def git_blob_sha(data: bytes) -> str:
    return Blob.from_string(data).id.decode()


class RefConflict(Exception):
    """The branch moved since the commit the writer based its change on."""


class PathConflict(ValueError):
    """A commit would put a file under a file, or a file where a folder is."""


class GitRepo:
    """One bare repository on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.repo = Repo(str(path), bare=True)
        self.store = self.repo.object_store

    @classmethod
    def init(cls, path: Path) -> GitRepo:
        path.mkdir(parents=True)
        Repo.init_bare(str(path))
        return cls(path)

    def close(self) -> None:
        self.repo.close()

    # -- revisions -----------------------------------------------------------------------
    def resolve(self, revision: str) -> str | None:
        """The commit id a branch, tag, `refs/...` name or commit id points to."""
        if _HEX40.match(revision):
            try:
                obj = self.store[revision.encode()]
            except KeyError:
                obj = None
            if isinstance(obj, Commit):
                return revision
        if revision.startswith("refs/"):
            candidates = [revision]
        else:
            candidates = [f"refs/heads/{revision}", f"refs/tags/{revision}"]
        for ref in candidates:
            try:
                sha = self.repo.refs[ref.encode()]
            except (KeyError, ValueError):
                continue
            return self._peel(sha)
        return None

    def _peel(self, sha: bytes) -> str:
        obj = self.store[sha]
        while isinstance(obj, Tag):
            obj = self.store[obj.object[1]]
        return obj.id.decode()

    def refs(self, prefix: str) -> dict[str, str]:
        """Names under `prefix` (e.g. "refs/heads/") and the commit each points to."""
        base = prefix.rstrip("/")
        return {
            f"{base}/{name.decode()}": self._peel(sha)
            for name, sha in self.repo.refs.as_dict(base.encode()).items()
        }

    # -- reading -------------------------------------------------------------------------
    def commit(self, sha: str) -> Commit:
        obj = self.store[sha.encode()]
        if not isinstance(obj, Commit):
            raise NotCommitError(sha.encode())
        return obj

    def _tree_at(self, commit_sha: str, path: str) -> Tree | None:
        tree = self.store[self.commit(commit_sha).tree]
        for part in [p for p in path.split("/") if p]:
            try:
                mode, sha = tree[part.encode()]
            except KeyError:
                return None
            if not stat.S_ISDIR(mode):
                return None
            tree = self.store[sha]
        return tree

    def entry(self, commit_sha: str, path: str) -> Entry | None:
        """The file or directory at `path`, or None."""
        parent, _, name = path.strip("/").rpartition("/")
        tree = self._tree_at(commit_sha, parent)
        if tree is None or not name:
            return None
        try:
            mode, sha = tree[name.encode()]
        except KeyError:
            return None
        return self._make_entry(path.strip("/"), mode, sha)

    def _make_entry(self, path: str, mode: int, sha: bytes) -> Entry:
        if stat.S_ISDIR(mode):
            return Entry(path, "directory", sha.decode())
        size, lfs = _blob_facts(self.store, sha)
        return Entry(path, "file", sha.decode(), size, lfs)

    def list(self, commit_sha: str, path: str = "", recursive: bool = False) -> Iterator[Entry]:
        """Entries under `path`, directories first in each folder as the Hub lists them."""
        tree = self._tree_at(commit_sha, path)
        if tree is None:
            raise KeyError(path)
        yield from self._walk(tree, path.strip("/"), recursive)

    def _walk(self, tree: Tree, prefix: str, recursive: bool) -> Iterator[Entry]:
        for item in tree.iteritems():
            name = item.path.decode()
            full = f"{prefix}/{name}" if prefix else name
            yield self._make_entry(full, item.mode, item.sha)
            if recursive and stat.S_ISDIR(item.mode):
                yield from self._walk(self.store[item.sha], full, True)

    def files(self, commit_sha: str) -> list[Entry]:
        return [e for e in self.list(commit_sha, "", recursive=True) if e.type == "file"]

    def read_blob(self, oid: str) -> bytes:
        return self.store[oid.encode()].as_raw_string()

    def history(self, commit_sha: str) -> Iterator[Commit]:
        for walk_entry in self.repo.get_walker(include=[commit_sha.encode()]):
            yield walk_entry.commit

    def last_changes(self, commit_sha: str, folder: str, limit: int = 1000) -> dict[str, Commit]:
        """For each name directly in `folder`, the newest commit that changed it, following
        first parents back at most `limit` commits (names older than that are left out)."""

        def children(sha: str) -> tuple[bytes | None, dict[str, bytes]]:
            tree = self._tree_at(sha, folder)
            if tree is None:
                return None, {}
            return tree.id, {i.path.decode(): i.sha for i in tree.iteritems()}

        tree_id, left = children(commit_sha)
        out: dict[str, Commit] = {}
        commit = self.commit(commit_sha)
        for _ in range(limit):
            if not left:
                break
            parent = self.commit(commit.parents[0].decode()) if commit.parents else None
            parent_tree, parent_children = children(parent.id.decode()) if parent else (None, {})
            if parent_tree != tree_id:  # the folder changed here: which of its names did
                for name, oid in list(left.items()):
                    if parent_children.get(name) != oid:
                        out[name] = commit
                        del left[name]
            if parent is None:
                break
            commit, tree_id = parent, parent_tree
        return out

    def changes(self, commit_sha: str) -> list[tuple[str, str | None, str | None]]:
        """(path, old blob id, new blob id) of each file a commit changed against its first
        parent (None where the file did not exist)."""
        commit = self.commit(commit_sha)
        old = self.commit(commit.parents[0].decode()).tree if commit.parents else None
        out = []
        for change in tree_changes(self.store, old, commit.tree):
            before, after = (e if e is not None and e.sha else None
                             for e in (change.old, change.new))
            path = (after or before).path.decode()
            out.append((path, before and before.sha.decode(), after and after.sha.decode()))
        return sorted(out)

    # -- writing (callers hold the repository's write lock) ------------------------------
    def write_commit(
        self,
        branch: str,
        changes: list[tuple[str, bytes | None]],
        deleted_folders: list[str],
        message: str,
        author: str,
        expected_parent: str | None,
    ) -> str:
        """Commit file changes (path, content or None to delete) on top of `branch`.

        With `expected_parent`, fail with RefConflict unless the branch still points there.
        """
        ref = f"refs/heads/{branch}".encode()
        try:
            head = self.repo.refs[ref]
        except KeyError:
            head = None
        if expected_parent is not None and (head or b"").decode() != expected_parent:
            raise RefConflict(branch)
        base_tree = self.store[self.commit(head.decode()).tree] if head else Tree()
        tree_changes: list[tuple[bytes, int | None, bytes | None]] = []
        if head:
            for folder in deleted_folders:
                folder = folder.strip("/")
                try:
                    for e in self.list(head.decode(), folder, recursive=True):
                        if e.type == "file":
                            tree_changes.append((e.path.encode(), None, None))
                except KeyError:
                    pass
        for path, content in changes:
            if content is None:
                tree_changes.append((path.encode(), None, None))
            else:
                blob = Blob.from_string(content)
                self.store.add_object(blob)
                tree_changes.append((path.encode(), FILE_MODE, blob.id))
        base = _TreeView(self, base_tree)
        tree_changes = [c for c in tree_changes if c[2] is not None or base.get(c[0])]
        # dulwich fails on a file under a file (a bare assert) and, given a file over a
        # folder, silently drops the folder's files: both are refused first.
        conflict = _path_conflict(base, tree_changes)
        if conflict:
            raise PathConflict(conflict)
        tree_id = commit_tree_changes(self.store, base_tree.copy(), tree_changes)

        c = Commit()
        c.tree = tree_id
        c.parents = [head] if head else []
        c.author = c.committer = author.encode()
        c.author_time = c.commit_time = int(time.time())
        c.author_timezone = c.commit_timezone = 0
        c.encoding = b"UTF-8"
        c.message = message.encode()
        self.store.add_object(c)
        if not self.repo.refs.set_if_equals(ref, head, c.id):
            raise RefConflict(branch)
        return c.id.decode()

    def set_ref(self, ref: str, sha: str | None, expected: str | None = None) -> bool:
        """Create, move (sha) or delete (None) a ref; compare-and-swap when `expected`."""
        old = expected.encode() if expected else None
        if sha is None:
            return self.repo.refs.remove_if_equals(ref.encode(), old)
        if expected is None:
            return self.repo.refs.add_if_new(ref.encode(), sha.encode())
        return self.repo.refs.set_if_equals(ref.encode(), old, sha.encode())

    def create_annotated_tag(self, name: str, target: str, message: str, tagger: str) -> None:
        tag = Tag()
        tag.name = name.encode()
        tag.object = (Commit, target.encode())
        tag.tagger = tagger.encode()
        tag.tag_time = int(time.time())
        tag.tag_timezone = 0
        tag.message = message.encode()
        self.store.add_object(tag)
        if not self.repo.refs.add_if_new(f"refs/tags/{name}".encode(), tag.id):
            raise RefConflict(name)


class _TreeView:
    """Lookups by path in one tree, each folder read once: a commit may name many files."""

    def __init__(self, repo: GitRepo, root: Tree) -> None:
        self.store = repo.store
        self._trees: dict[bytes, Tree | None] = {b"": root}
        self._entries: dict[bytes, tuple[int, bytes] | None] = {}

    def get(self, path: bytes) -> tuple[int, bytes] | None:
        """(mode, sha) of the file or folder at `path`, or None when there is none."""
        if path not in self._entries:
            parent, _, name = path.rpartition(b"/")
            tree = self.tree(parent)
            found = None
            if tree is not None:
                try:
                    found = tree[name]
                except KeyError:
                    pass
            self._entries[path] = found
        return self._entries[path]

    def tree(self, path: bytes) -> Tree | None:
        """The folder at `path`, or None when it is missing or a file."""
        if path not in self._trees:
            found = self.get(path)
            is_dir = found is not None and stat.S_ISDIR(found[0])
            self._trees[path] = self.store[found[1]] if is_dir else None
        return self._trees[path]


def _path_conflict(
    base: _TreeView, changes: list[tuple[bytes, int | None, bytes | None]]
) -> str | None:
    """Why `changes` cannot apply to `base`, or None: a path is a file or a folder, not both."""
    removed = {path for path, _, sha in changes if sha is None}
    added = {path for path, _, sha in changes if sha is not None}
    for path in sorted(added):
        parts = path.split(b"/")
        for i in range(1, len(parts)):
            parent = b"/".join(parts[:i])
            found = None if parent in removed else base.get(parent)
            if parent in added or (found and not stat.S_ISDIR(found[0])):
                return f"{path.decode()} cannot be added: {parent.decode()} is a file"
        # Even a folder this commit empties: dulwich cannot swap one for a file in one go.
        if base.tree(path) is not None:
            return f"{path.decode()} cannot be added: it is a folder"
    return None


def _blob_facts(store, sha: bytes) -> tuple[int, LfsInfo | None]:
    """(real size, LFS info) of a blob; cached, since a blob id names its content."""
    cached = _FACTS.get(sha)
    if cached is None:
        data = store[sha].as_raw_string()
        pointer = parse_lfs_pointer(data)
        if pointer:
            cached = (pointer[1], LfsInfo(pointer[0], pointer[1], len(data)))
        else:
            cached = (len(data), None)
        if len(_FACTS) > 200_000:
            _FACTS.clear()
        _FACTS[sha] = cached
    return cached


_FACTS: dict[bytes, tuple[int, LfsInfo | None]] = {}
