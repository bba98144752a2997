"""Commits: preupload, LFS uploads (streamed, parallel), and the NDJSON commit.

    operations -> preupload (regular or LFS, remote oid) -> drop unchanged files
               -> LFS batch -> PUT bytes to the signed href -> verify
               -> POST /api/{t}/{repo}/commit/{rev} (NDJSON)

Files are read in chunks everywhere: a large file is hashed and sent without ever being held
in memory whole. Only regular (small) files travel inline, base64, in the commit body.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal
from urllib.parse import quote

import httpx
from tqdm.auto import tqdm

from cove.hub import config, http

CHUNK = 8 * 1024 * 1024
SAMPLE_SIZE = 512
PREUPLOAD_BATCH = 256  # files per preupload and LFS batch call, as the Hub allows
LFS_JSON = "application/vnd.git-lfs+json"
# Large PUTs and big commits keep the server busy for a while before it answers.
UPLOAD_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
PUT_RETRIES = 3
FORBIDDEN_FOLDERS = (".git", ".cache")


def validate_path_in_repo(path: str) -> str:
    """A clean repository path: no leading '/', no '.' or '..' parts, nothing under .git/.cache."""
    path = path.removeprefix("/")
    if path.startswith("./"):
        path = path[2:]
    parts = path.split("/")
    if not path or path == "." or ".." in parts:
        raise ValueError(f"Invalid path_in_repo {path!r}: it must be a relative path inside the "
                         "repository, without '..' parts.")
    for forbidden in FORBIDDEN_FOLDERS:
        if forbidden in parts:
            raise ValueError(f"Invalid path_in_repo {path!r}: files under a {forbidden!r} folder "
                             "cannot be committed.")
    return path


@dataclass
class CommitOperationAdd:
    """Add or replace the file `path_in_repo` with a local file path, bytes or a binary file object."""

    path_in_repo: str
    path_or_fileobj: str | Path | bytes | BinaryIO
    # Filled in by the commit: how the server wants the file, and what it holds now.
    _upload_mode: Literal["lfs", "regular"] | None = field(default=None, init=False, repr=False)
    _should_ignore: bool = field(default=False, init=False, repr=False)
    _remote_oid: str | None = field(default=None, init=False, repr=False)
    _sha256: str | None = field(default=None, init=False, repr=False)
    _start: int = field(default=0, init=False, repr=False)
    size: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path_in_repo = validate_path_in_repo(self.path_in_repo)
        source = self.path_or_fileobj
        if isinstance(source, (str, Path)):
            self.path_or_fileobj = os.path.normpath(os.path.expanduser(str(source)))
            if not os.path.isfile(self.path_or_fileobj):
                raise ValueError(f"path_or_fileobj {str(source)!r} is not a file on this machine.")
            self.size = os.path.getsize(self.path_or_fileobj)
        elif isinstance(source, bytes):
            self.size = len(source)
        elif isinstance(source, io.IOBase) and not isinstance(source, io.TextIOBase):
            try:
                self._start = source.tell()
                self.size = source.seek(0, os.SEEK_END) - self._start
                source.seek(self._start)
            except (OSError, AttributeError) as e:
                raise ValueError("path_or_fileobj is a file object without seek() and tell(): "
                                 "pass a path or bytes instead.") from e
        else:
            raise ValueError("path_or_fileobj must be a path (str or Path), bytes, or a file "
                             "object opened in binary mode.")

    @contextmanager
    def as_file(self) -> Iterator[BinaryIO]:
        """A binary file positioned at the start of the content (a file object is rewound after)."""
        source = self.path_or_fileobj
        if isinstance(source, str):
            with open(source, "rb") as f:
                yield f
        elif isinstance(source, bytes):
            yield io.BytesIO(source)
        else:
            source.seek(self._start)
            try:
                yield source
            finally:
                source.seek(self._start)

    def iter_chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        with self.as_file() as f:
            while block := f.read(size):
                yield block

    @property
    def sample(self) -> bytes:
        with self.as_file() as f:
            return f.read(SAMPLE_SIZE)

    @property
    def sha256(self) -> str:
        """The content's sha256 (the LFS oid), hashed in chunks once and remembered."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for block in self.iter_chunks():
                digest.update(block)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def git_sha1(self) -> str:
        """The git blob id of the content: sha1(b"blob <size>\\0" + content)."""
        digest = hashlib.sha1(b"blob %d\0" % self.size)
        for block in self.iter_chunks():
            digest.update(block)
        return digest.hexdigest()

    def local_oid(self) -> str:
        """The oid the server reports for this file once committed, to detect unchanged files."""
        return self.sha256 if self._upload_mode == "lfs" else self.git_sha1()


@dataclass
class CommitOperationDelete:
    """Delete the file (or, with `is_folder`, the folder) `path_in_repo`.

    `is_folder="auto"` treats a path ending in '/' as a folder.
    """

    path_in_repo: str
    is_folder: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        self.path_in_repo = validate_path_in_repo(self.path_in_repo)
        if self.is_folder == "auto":
            self.is_folder = self.path_in_repo.endswith("/")
        if not isinstance(self.is_folder, bool):
            raise ValueError(f"is_folder must be True, False or 'auto', not {self.is_folder!r}.")


CommitOperation = CommitOperationAdd | CommitOperationDelete


def _api_url(endpoint: str, repo_type: str, repo_id: str, action: str, revision: str) -> str:
    return (f"{endpoint}/api/{config.API_PLURAL[repo_type]}/{repo_id}/{action}/"
            f"{quote(revision, safe='')}")


def validate_readme(endpoint: str, op: CommitOperationAdd, repo_type: str, token) -> None:
    """Fail before uploading anything when README.md's metadata is invalid YAML."""
    with op.as_file() as f:
        content = f.read().decode("utf-8", "replace")
    r = http.request("POST", f"{endpoint}/api/validate-yaml", token=token,
                     json={"content": content, "repoType": repo_type})
    http.raise_for_status(r)
    problems = r.json().get("errors") or []
    if problems:
        details = "\n".join(f"- {p.get('message', p)}" for p in problems)
        raise ValueError(f"Invalid metadata in README.md:\n{details}")


def fetch_upload_modes(endpoint: str, repo_type: str, repo_id: str, revision: str,
                       additions: list[CommitOperationAdd], token, create_pr: bool) -> None:
    """Ask the server, 256 files a call, which files go to LFS and what it holds for each path."""
    url = _api_url(endpoint, repo_type, repo_id, "preupload", revision)
    params = {"create_pr": "1"} if create_pr else None
    for start in range(0, len(additions), PREUPLOAD_BATCH):
        chunk = additions[start:start + PREUPLOAD_BATCH]
        payload = {"files": [
            {"path": op.path_in_repo, "sample": base64.b64encode(op.sample).decode("ascii"),
             "size": op.size}
            for op in chunk
        ]}
        r = http.request("POST", url, token=token, json=payload, params=params)
        http.raise_for_status(r, repo_id, repo_type)
        answers = {f["path"]: f for f in r.json().get("files", [])}
        for op in chunk:
            answer = answers.get(op.path_in_repo)
            if answer is None or answer.get("uploadMode") not in ("lfs", "regular"):
                raise ValueError(f"The server's preupload answer has no upload mode for "
                                 f"{op.path_in_repo!r}: is it a Hub server?")
            # Empty files cannot go to LFS: they are always committed inline.
            op._upload_mode = "regular" if op.size == 0 else answer["uploadMode"]
            op._should_ignore = bool(answer.get("shouldIgnore"))
            op._remote_oid = answer.get("oid")


def _is_deleted(path: str, deleted: set[str]) -> bool:
    return path in deleted or any(str(p) in deleted for p in PurePosixPath(path).parents)


def drop_unchanged(operations: list[CommitOperation], num_threads: int) -> list[CommitOperation]:
    """The operations that change something: files equal to the remote ones are left out."""
    adds = [op for op in operations if isinstance(op, CommitOperationAdd) and op._remote_oid]
    with ThreadPoolExecutor(max(1, num_threads)) as pool:  # hashing releases the GIL
        local = dict(zip((id(op) for op in adds), pool.map(CommitOperationAdd.local_oid, adds),
                         strict=True))
    deleted = {op.path_in_repo.rstrip("/") for op in operations
               if isinstance(op, CommitOperationDelete)}
    kept: list[CommitOperation] = []
    for op in operations:
        if isinstance(op, CommitOperationAdd):
            if op._should_ignore:
                continue
            unchanged = op._remote_oid is not None and local[id(op)] == op._remote_oid
            if unchanged and not _is_deleted(op.path_in_repo, deleted):
                continue
        kept.append(op)
    return kept


def upload_lfs_files(endpoint: str, repo_type: str, repo_id: str, revision: str,
                     additions: list[CommitOperationAdd], token, num_threads: int) -> None:
    """Send the LFS files the server does not have yet, `num_threads` at a time."""
    by_oid: dict[str, CommitOperationAdd] = {}
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        for op, oid in zip(additions, pool.map(lambda op: op.sha256, additions), strict=True):
            by_oid.setdefault(oid, op)  # the same content under two paths goes once
    url = f"{endpoint}/{config.URL_PREFIX[repo_type]}{repo_id}.git/info/lfs/objects/batch"
    oids = list(by_oid)
    todo: list[tuple[CommitOperationAdd, dict]] = []
    for start in range(0, len(oids), PREUPLOAD_BATCH):
        payload = {
            "operation": "upload",
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": by_oid[oid].size}
                        for oid in oids[start:start + PREUPLOAD_BATCH]],
            "hash_algo": "sha256",
            "ref": {"name": revision},
        }
        r = http.request("POST", url, token=token, json=payload,
                         headers={"accept": LFS_JSON, "content-type": LFS_JSON})
        http.raise_for_status(r, repo_id, repo_type)
        failed = []
        for obj in r.json().get("objects", []):
            op = by_oid.get(obj.get("oid"))
            if obj.get("error") or op is None:
                error = obj.get("error") or {"message": "an object that was not asked for"}
                failed.append(f"{op.path_in_repo if op else obj.get('oid')}: "
                              f"{error.get('message', error)}")
            elif obj.get("actions"):  # no actions: the server already stores this object
                todo.append((op, obj["actions"]))
        if failed:
            raise ValueError("The LFS batch API refused some files:\n" + "\n".join(failed))
    if not todo:
        return
    total = sum(op.size for op, _ in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"Upload {len(todo)} LFS files",
              disable=config.progress_disabled()) as bar, \
            ThreadPoolExecutor(max(1, num_threads)) as pool:
        for _ in pool.map(lambda item: _upload_one(item[0], item[1], token, bar, repo_id, repo_type),
                          todo):
            pass


def _lower_keys(headers: dict | None) -> dict:
    # Our own headers are lower-case: a server's "Authorization" must replace, not duplicate.
    return {k.lower(): v for k, v in (headers or {}).items()}


def _upload_one(op: CommitOperationAdd, actions: dict, token, bar: tqdm, repo_id: str,
                repo_type: str) -> None:
    upload = actions.get("upload")
    if not upload or not upload.get("href"):
        raise ValueError(f"The LFS batch answer for {op.path_in_repo!r} has no upload href.")
    if (upload.get("header") or {}).get("chunk_size"):
        raise ValueError("The server asked for a multipart LFS upload, which this client does "
                         "not speak: only the 'basic' transfer is supported.")
    # The href is signed: it carries its own authorization, so no token goes with the bytes.
    headers = {**_lower_keys(upload.get("header")), "content-length": str(op.size)}
    for attempt in range(1, PUT_RETRIES + 1):
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            for block in op.iter_chunks():
                sent += len(block)
                bar.update(len(block))
                yield block

        http.check_online()
        try:
            r = http.client().put(upload["href"], content=body(), headers=headers,
                                  timeout=UPLOAD_TIMEOUT)
        except httpx.TransportError:
            bar.update(-sent)
            if attempt == PUT_RETRIES:
                raise
            continue
        http.raise_for_status(r, repo_id, repo_type)
        break
    verify = actions.get("verify")
    if verify and verify.get("href"):
        r = http.request("POST", verify["href"], token=token,
                         headers={**_lower_keys(verify.get("header")), "content-type": LFS_JSON},
                         json={"oid": op.sha256, "size": op.size})
        http.raise_for_status(r, repo_id, repo_type)


def _payload(operations: list[CommitOperation], summary: str, description: str,
             parent_commit: str | None) -> Iterator[bytes]:
    """The NDJSON commit body, one line at a time (regular files are read as they are sent)."""
    header: dict = {"summary": summary, "description": description}
    if parent_commit is not None:
        header["parentCommit"] = parent_commit
    yield json.dumps({"key": "header", "value": header}).encode() + b"\n"
    for op in operations:
        if isinstance(op, CommitOperationDelete):
            key = "deletedFolder" if op.is_folder else "deletedFile"
            item = {"key": key, "value": {"path": op.path_in_repo}}
        elif op._upload_mode == "lfs":
            item = {"key": "lfsFile", "value": {"path": op.path_in_repo, "algo": "sha256",
                                                "oid": op.sha256, "size": op.size}}
        else:
            with op.as_file() as f:
                content = base64.b64encode(f.read()).decode("ascii")
            item = {"key": "file", "value": {"content": content, "path": op.path_in_repo,
                                             "encoding": "base64"}}
        yield json.dumps(item).encode() + b"\n"


def commit(
    *,
    endpoint: str,
    repo_id: str,
    repo_type: str,
    revision: str,
    operations: Iterable[CommitOperation],
    commit_message: str,
    commit_description: str = "",
    parent_commit: str | None = None,
    create_pr: bool = False,
    num_threads: int = 5,
    token=None,
) -> dict | None:
    """Upload and commit; the server's answer (commitOid, commitUrl, ...), or None when nothing
    would change (no empty commit is made)."""
    operations = list(operations)
    additions = [op for op in operations if isinstance(op, CommitOperationAdd)]
    readme = next((op for op in additions if op.path_in_repo == "README.md"), None)
    if readme is not None:
        validate_readme(endpoint, readme, repo_type, token)
    fetch_upload_modes(endpoint, repo_type, repo_id, revision, additions, token, create_pr)
    operations = drop_unchanged(operations, num_threads)
    if not operations:
        return None
    lfs = [op for op in operations if isinstance(op, CommitOperationAdd) and op._upload_mode == "lfs"]
    if lfs:
        upload_lfs_files(endpoint, repo_type, repo_id, revision, lfs, token, num_threads)
    r = http.request(
        "POST", _api_url(endpoint, repo_type, repo_id, "commit", revision), token=token,
        content=_payload(operations, commit_message, commit_description, parent_commit),
        headers={"content-type": "application/x-ndjson"},
        params={"create_pr": "1"} if create_pr else None, timeout=UPLOAD_TIMEOUT,
    )
    http.raise_for_status(r, repo_id, repo_type)
    return r.json()
