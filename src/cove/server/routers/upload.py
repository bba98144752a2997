"""Uploads: preupload (regular or LFS per file) and the NDJSON commit."""

from __future__ import annotations

import base64
import binascii
import json

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from cove.server import errors
from cove.server.config import LFS_SIZE_THRESHOLD
from cove.server.deps import clean_path, hub_of, load_repo, repo_url, resolve_revision
from cove.server.gitrepo import lfs_pointer
from cove.server.lfsmatch import lfs_patterns, matches
from cove.server.routing import unslash
from cove.server.storage import is_oid

router = APIRouter()


def _branch(revision: str) -> str:
    revision = unslash(revision)
    return revision.removeprefix("refs/heads/")


@router.post("/api/{rtype:rtype}/{repo_id:repo}/preupload/{revision}")
async def preupload(request: Request, rtype: str, repo_id: str, revision: str) -> dict:
    body = await request.json()
    files = body.get("files")
    if not isinstance(files, list):
        raise errors.bad_request("Expected {'files': [{'path', 'sample', 'size'}]}.")
    repo, _ = load_repo(request, rtype, repo_id, write=True)
    git = hub_of(request).git(repo)
    try:
        sha = resolve_revision(git, repo, revision)
        attrs = git.entry(sha, ".gitattributes")
        patterns = lfs_patterns(git.read_blob(attrs.oid).decode("utf-8", "replace")) if attrs else []
        out = []
        for f in files:
            path = clean_path(str(f.get("path", "")))
            size = int(f.get("size") or 0)
            try:
                sample = base64.b64decode(f.get("sample") or "")
            except (binascii.Error, ValueError):
                raise errors.bad_request(f"Invalid base64 sample for {path}.") from None
            lfs = size > 0 and (
                size >= LFS_SIZE_THRESHOLD or matches(patterns, path) or b"\x00" in sample
            )
            item = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = git.entry(sha, path)
            if existing is not None and existing.type == "file":
                # Lets the client skip a file that did not change.
                item["oid"] = existing.lfs.oid if existing.lfs else existing.oid
            out.append(item)
        return {"files": out}
    finally:
        git.close()


@router.post("/api/{rtype:rtype}/{repo_id:repo}/commit/{revision}")
async def commit(request: Request, rtype: str, repo_id: str, revision: str) -> dict:
    repo, who = load_repo(request, rtype, repo_id, write=True)
    if request.query_params.get("create_pr") in ("1", "true", "True"):
        raise errors.HubError(
            501, "NotImplemented", "Pull requests are not supported by this server yet: "
            "commit to a branch instead (create_branch, then revision=<branch>)."
        )
    hub = hub_of(request)
    header: dict = {}
    changes: list[tuple[str, bytes | None]] = []
    folders: list[str] = []
    raw = await request.body()
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError):
            raise errors.bad_request(f"Line {n} of the commit payload is not a {{key, value}} JSON object.") from None
        if key == "header":
            header = value
        elif key == "file":
            path = clean_path(str(value.get("path", "")))
            if value.get("encoding", "base64") != "base64":
                raise errors.bad_request(f"Unsupported encoding for {path}: use base64.")
            try:
                content = base64.b64decode(value.get("content") or "", validate=True)
            except (binascii.Error, ValueError):
                raise errors.bad_request(f"Invalid base64 content for {path}.") from None
            changes.append((path, content))
        elif key == "lfsFile":
            path = clean_path(str(value.get("path", "")))
            oid, size = str(value.get("oid", "")), value.get("size")
            if value.get("algo", "sha256") != "sha256" or not is_oid(oid) or not (
                size is None or isinstance(size, int)
            ):
                raise errors.bad_request(f"Invalid LFS reference for {path}.")
            stored = hub.objects.size(oid)
            if size is None:  # CommitOperationCopy of an LFS file sends the oid alone
                size = stored
            if stored is None or stored != size:
                raise errors.HubError(
                    422, "LfsObjectMissing",
                    f"LFS object {oid} for {path} was not uploaded (or not verified): upload it "
                    "through the LFS batch API before committing.",
                )
            changes.append((path, lfs_pointer(oid, size)))
        elif key == "deletedFile":
            changes.append((clean_path(str(value.get("path", ""))), None))
        elif key == "deletedFolder":
            folders.append(clean_path(str(value.get("path", "")).rstrip("/")))
        else:
            raise errors.bad_request(f"Unsupported commit operation {key!r} on line {n}.")
    summary = (header.get("summary") or "").strip()
    if not summary:
        raise errors.bad_request("The commit needs a summary (the header's 'summary').")
    description = (header.get("description") or "").strip()
    message = summary + ("\n\n" + description if description else "")
    branch = _branch(revision)
    sha = await run_in_threadpool(
        hub.commit, repo, branch, changes, folders, message, who, header.get("parentCommit")
    )
    return {
        "commitUrl": f"{repo_url(request, repo)}/commit/{sha}",
        "commitOid": sha,
        "commitMessage": message,
        "pullRequestUrl": None,
    }
