"""Downloads into the shared cache: verified, resumable, atomic, parallel across files."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
from tqdm.auto import tqdm

from cove.hub import config, http, stream
from cove.hub.cache import RepoCache, atomic_write, normalize_etag
from cove.hub.errors import (
    CorruptedDownloadError,
    EntryNotFoundError,
    FileMetadataError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
)

CHUNK = 8 * 1024 * 1024  # file reads when re-hashing
NET_CHUNK = 1024 * 1024  # network reads into one reused buffer
MAX_RETRIES = 5


def file_url(repo_id: str, filename: str, repo_type: str = "model", revision: str = "main",
             endpoint: str | None = None) -> str:
    """The resolve URL of a file (hf_hub_url)."""
    base = (endpoint or config.endpoint()).rstrip("/")
    return (f"{base}/{config.URL_PREFIX[repo_type]}{repo_id}/resolve/"
            f"{quote(revision, safe='')}/{quote(filename)}")


hf_hub_url = file_url


def _metadata(url: str, token, repo_id: str | None = None,
              repo_type: str | None = None) -> tuple[str, str, int]:
    """(commit, etag, size) from a HEAD; relative redirects are followed, as the Hub client does."""
    headers = {**http.auth_headers(token), "accept-encoding": "identity"}
    for _ in range(5):
        http.check_online()
        r = http.client().head(url, headers=headers)
        location = r.headers.get("location")
        if r.is_redirect and location and location.startswith("/"):
            url = str(r.url.join(location))
            continue
        break
    if r.status_code >= 400:
        http.raise_for_status(r, repo_id, repo_type)
    commit = r.headers.get("x-repo-commit")
    etag = normalize_etag(r.headers.get("x-linked-etag") or r.headers.get("etag"))
    size = r.headers.get("x-linked-size") or r.headers.get("content-length")
    if not (commit and etag and size):
        raise FileMetadataError(
            f"The server did not send the commit, ETag and size of {url}: is it a Hub server?"
        )
    return commit, etag, int(size)


def _hasher(etag: str, size: int):
    """What the etag promises: sha256 of the bytes (LFS) or the git blob sha1 (regular files)."""
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        return hashlib.sha256()
    if re.fullmatch(r"[0-9a-f]{40}", etag):
        h = hashlib.sha1()
        h.update(b"blob %d\x00" % size)
        return h
    return None  # an etag of another kind (another server): size check only


def _hash_file(etag: str, size: int, path: Path):
    digest = _hasher(etag, size)
    if digest and path.exists():
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
    return digest


def _fetch(url: str, dest: Path, size: int, etag: str, token, progress: bool, name: str) -> None:
    """Stream `url` into `dest`, resuming with a Range request after a dropped connection.

    The bytes are checked against `size` and the hash the etag names; a mismatch removes the
    partial file and raises, so nothing corrupt ever reaches the cache.
    """
    pos = dest.stat().st_size if dest.exists() else 0
    if pos > size:
        dest.unlink()
        pos = 0
    if size == 0:  # nothing to fetch, but the caller moves `dest` into place
        dest.touch()
    digest = _hash_file(etag, size, dest)  # a resumed file's first part counts too
    bar = tqdm(total=size, initial=pos, unit="B", unit_scale=True, desc=name,
               disable=not progress or config.progress_disabled())
    headers = {**http.auth_headers(token), "accept-encoding": "identity"}
    buf = bytearray(min(NET_CHUNK, max(size - pos, 1)))  # small files, small buffers
    view = memoryview(buf)
    failures = 0
    try:
        while pos < size:
            req_headers = {**headers, "range": f"bytes={pos}-"} if pos else headers
            try:
                http.check_online()
                with stream.get(url, req_headers) as r:
                    if r.status >= 400:
                        http.raise_for_status(stream.as_httpx_response(url, r))
                    if pos and r.status != 206:  # range ignored: start over
                        pos = 0
                        digest = _hasher(etag, size)
                        bar.reset(total=size)
                    with open(dest, "ab" if pos else "wb") as f:
                        while n := r.readinto(buf):
                            chunk = view[:n]
                            f.write(chunk)
                            if digest:
                                digest.update(chunk)
                            pos += n
                            bar.update(n)
            except stream.TRANSPORT_ERRORS:
                failures += 1
                if failures > MAX_RETRIES:
                    raise
                time.sleep(min(0.2 * 2**failures, 5))
                # Resume from what reached the disk; re-hash it, the stream stopped mid-chunk.
                pos = dest.stat().st_size if dest.exists() else 0
                digest = _hash_file(etag, size, dest)
                bar.reset(total=size)
                bar.update(pos)
                continue
            if pos < size:  # the server closed early without an error: resume
                failures += 1
                if failures > MAX_RETRIES:
                    break
    finally:
        bar.close()
    if pos != size or (digest and digest.hexdigest() != etag):
        dest.unlink(missing_ok=True)
        got = f"hash {digest.hexdigest()}" if digest and pos == size else f"{pos} bytes"
        raise CorruptedDownloadError(
            f"Download of {url} is corrupt: expected {size} bytes matching etag {etag}, "
            f"got {got}. Nothing was cached; try again."
        )


def _into_blob(cache: RepoCache, url: str, etag: str, size: int, token, progress: bool,
               name: str, force: bool) -> Path:
    blob = cache.blob(etag)
    if blob.exists() and not force:
        return blob
    blob.parent.mkdir(parents=True, exist_ok=True)
    with cache.lock(etag):  # one writer per blob, across processes and libraries
        if blob.exists() and not force:
            return blob
        incomplete = blob.with_name(blob.name + ".incomplete")
        _fetch(url, incomplete, size, etag, token, progress, name)
        os.replace(incomplete, blob)
    return blob


def hf_hub_download(
    repo_id: str,
    filename: str,
    *,
    subfolder: str | None = None,
    repo_type: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> str:
    """Download one file into the cache (or `local_dir`) and return its local path."""
    repo_type = config.check_repo_type(repo_type)
    revision = revision or "main"
    if subfolder:
        filename = f"{subfolder.strip('/')}/{filename}"
    cache = RepoCache(Path(cache_dir) if cache_dir else config.cache_dir(), repo_id, repo_type)
    url = file_url(repo_id, filename, repo_type, revision, endpoint)
    if local_files_only or config.offline():
        return _from_cache(cache, repo_id, filename, revision, local_dir, reason="offline")
    try:
        commit, etag, size = _metadata(url, token, repo_id, repo_type)
    except RemoteEntryNotFoundError as e:
        commit = e.response.headers.get("x-repo-commit")
        if commit:
            cache.mark_missing(commit, filename)
            if revision != commit:
                cache.write_ref(revision, commit)
        raise
    except (httpx.TransportError, OfflineModeIsEnabled):
        return _from_cache(cache, repo_id, filename, revision, local_dir, reason="unreachable")
    if local_dir is not None:
        return str(_to_local_dir(Path(local_dir), file_url(repo_id, filename, repo_type, commit,
                                 endpoint), filename, commit, etag, size, token, force_download))
    cache.write_ref(revision, commit)
    pointer = cache.pointer(commit, filename)
    if pointer.exists() and not force_download:
        return str(pointer)
    url = file_url(repo_id, filename, repo_type, commit, endpoint)  # pin to the commit
    _into_blob(cache, url, etag, size, token, True, filename, force_download)
    return str(cache.link(commit, filename, etag))


hub_download = hf_hub_download


def _from_cache(cache: RepoCache, repo_id: str, filename: str, revision: str,
                local_dir, reason: str) -> str:
    if local_dir is not None:
        path = Path(local_dir) / filename
        if path.exists():
            return str(path)
    commit = cache.commit_for(revision)
    if commit:
        pointer = cache.pointer(commit, filename)
        if pointer.exists():
            return str(pointer)
        if cache.is_missing(commit, filename):
            raise EntryNotFoundError(
                f"{filename} does not exist in {repo_id} at {revision} (known from the cache)."
            )
    why = ("offline mode is on (COVE_OFFLINE / HF_HUB_OFFLINE or local_files_only=True)"
           if reason == "offline" else "the Hub could not be reached")
    raise LocalEntryNotFoundError(
        f"{filename} of {repo_id} at revision {revision!r} is not in the cache at "
        f"{cache.cache_dir}, and {why}. Download it once while online, or check the "
        "repository id, revision and file name."
    )


def _metadata_file(local_dir: Path, filename: str) -> Path:
    return local_dir / ".cache" / "huggingface" / "download" / f"{filename}.metadata"


def _to_local_dir(local_dir: Path, url: str, filename: str, commit: str, etag: str, size: int,
                  token, force: bool) -> Path:
    """Download to `local_dir/filename`, with huggingface_hub's metadata file beside it."""
    target = local_dir / filename
    meta = _metadata_file(local_dir, filename)
    if target.exists() and meta.exists() and not force:
        lines = meta.read_text().splitlines()
        if len(lines) >= 2 and lines[1] == etag and target.stat().st_size == size:
            return target
    meta.parent.mkdir(parents=True, exist_ok=True)
    incomplete = meta.with_name(meta.name.removesuffix(".metadata") + f".{etag}.incomplete")
    _fetch(url, incomplete, size, etag, token, True, filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(incomplete, target)
    atomic_write(meta, f"{commit}\n{etag}\n{time.time()}\n".encode())
    return target


def _filter(paths: Iterable[str], allow, ignore) -> list[str]:
    def norm(patterns):
        if patterns is None:
            return None
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        return [p + "*" if p.endswith("/") else p for p in patterns]

    allow, ignore = norm(allow), norm(ignore)
    return [
        p for p in paths
        if (allow is None or any(fnmatch.fnmatch(p, a) for a in allow))
        and not (ignore and any(fnmatch.fnmatch(p, i) for i in ignore))
    ]


def snapshot_download(
    repo_id: str,
    *,
    repo_type: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    allow_patterns: str | list[str] | None = None,
    ignore_patterns: str | list[str] | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    max_workers: int = 16,
    force_download: bool = False,
    local_files_only: bool = False,
) -> str:
    """Download a repository at a revision; return the snapshot folder (or `local_dir`).

    One listing call gives every file's commit, size and hash, so each file is a single GET
    (no HEAD per file), all over one pooled connection set.
    """
    repo_type = config.check_repo_type(repo_type)
    revision = revision or "main"
    cache = RepoCache(Path(cache_dir) if cache_dir else config.cache_dir(), repo_id, repo_type)
    base = (endpoint or config.endpoint()).rstrip("/")
    if local_files_only or config.offline():
        return _snapshot_from_cache(cache, repo_id, revision, local_dir, "offline")
    try:
        r = http.request(
            "GET", f"{base}/api/{config.API_PLURAL[repo_type]}/{repo_id}/revision/"
            f"{quote(revision, safe='')}", token=token, params={"blobs": "true"})
        http.raise_for_status(r, repo_id, repo_type)
    except (httpx.TransportError, OfflineModeIsEnabled):
        return _snapshot_from_cache(cache, repo_id, revision, local_dir, "unreachable")
    info = r.json()
    commit = info["sha"]
    files = {s["rfilename"]: s for s in info.get("siblings", [])}
    wanted = _filter(files, allow_patterns, ignore_patterns)

    def one(path: str) -> None:
        s = files[path]
        etag = s["lfs"]["sha256"] if s.get("lfs") else s.get("blobId")
        url = file_url(repo_id, path, repo_type, commit, base)
        if etag is None or s.get("size") is None:  # a server without blob facts: ask per file
            _, etag, size = _metadata(url, token)
        else:
            size = s["size"]
        if local_dir is not None:
            _to_local_dir(Path(local_dir), url, path, commit, etag, size, token, force_download)
            return
        if cache.pointer(commit, path).exists() and not force_download:
            return
        _into_blob(cache, url, etag, size, token, False, path, force_download)
        cache.link(commit, path, etag)

    with tqdm(total=len(wanted), desc=f"Fetching {len(wanted)} files", unit="file",
              disable=config.progress_disabled()) as bar:
        workers = max(1, min(max_workers, len(wanted)))
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(one, wanted):
                bar.update(1)
    if local_dir is not None:
        return str(Path(local_dir))
    cache.write_ref(revision, commit)
    cache.snapshot(commit).mkdir(parents=True, exist_ok=True)
    return str(cache.snapshot(commit))


def _snapshot_from_cache(cache: RepoCache, repo_id: str, revision: str, local_dir,
                         reason: str) -> str:
    if local_dir is not None and Path(local_dir).is_dir():
        return str(Path(local_dir))
    commit = cache.commit_for(revision)
    if commit and cache.snapshot(commit).is_dir():
        return str(cache.snapshot(commit))
    why = "offline mode is on" if reason == "offline" else "the Hub could not be reached"
    raise LocalEntryNotFoundError(
        f"No snapshot of {repo_id} at revision {revision!r} in the cache at {cache.cache_dir}, "
        f"and {why}. Download it once while online."
    )


__all__ = ["hf_hub_download", "hub_download", "snapshot_download", "file_url", "hf_hub_url"]
