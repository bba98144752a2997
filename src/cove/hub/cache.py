"""The Hugging Face cache layout, shared with huggingface_hub in both directions.

    <cache>/models--org--name/blobs/<etag>
    <cache>/models--org--name/snapshots/<commit>/<path> -> ../../blobs/<etag>
    <cache>/models--org--name/refs/<revision>            (holds the commit id)
    <cache>/models--org--name/.no_exist/<commit>/<path>  (a known-missing file)
    <cache>/.locks/models--org--name/<etag>.lock         (one writer per blob)
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from filelock import FileLock

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_commit(revision: str) -> bool:
    return bool(_COMMIT.match(revision))


def repo_folder_name(repo_id: str, repo_type: str) -> str:
    return f"{repo_type}s--{repo_id.replace('/', '--')}"


def normalize_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    return etag.removeprefix("W/").strip('"')


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class RepoCache:
    """One repository's folder in the cache."""

    def __init__(self, cache_dir: Path, repo_id: str, repo_type: str) -> None:
        self.cache_dir = Path(cache_dir)
        self.folder = repo_folder_name(repo_id, repo_type)
        self.root = self.cache_dir / self.folder

    def commit_for(self, revision: str) -> str | None:
        """The commit a revision pointed to when last seen online (a commit id is itself)."""
        if is_commit(revision):
            return revision
        try:
            return (self.root / "refs" / revision).read_text().strip() or None
        except OSError:
            return None

    def write_ref(self, revision: str, commit: str) -> None:
        if revision == commit:
            return
        ref = self.root / "refs" / revision
        try:
            if ref.read_text().strip() == commit:
                return
        except OSError:
            pass
        atomic_write(ref, commit.encode())

    def snapshot(self, commit: str) -> Path:
        return self.root / "snapshots" / commit

    def pointer(self, commit: str, path: str) -> Path:
        return self.snapshot(commit) / path

    def blob(self, etag: str) -> Path:
        return self.root / "blobs" / etag

    def lock(self, etag: str) -> FileLock:
        path = self.cache_dir / ".locks" / self.folder / f"{etag}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

    def link(self, commit: str, path: str, etag: str) -> Path:
        """Point snapshots/<commit>/<path> at the blob with a relative symlink."""
        pointer = self.pointer(commit, path)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(self.blob(etag), pointer.parent)
        tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, pointer)  # atomic: readers never see a half-made link
        return pointer

    def mark_missing(self, commit: str, path: str) -> None:
        marker = self.root / ".no_exist" / commit / path
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def is_missing(self, commit: str, path: str) -> bool:
        return (self.root / ".no_exist" / commit / path).exists()
