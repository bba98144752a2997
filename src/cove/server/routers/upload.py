"""Uploads: preupload (regular or LFS per file) and the NDJSON commit."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from cove.server import errors
from cove.server.config import LFS_SIZE_THRESHOLD
from cove.server.deps import (
    RepoIdParam,
    RepoTypeParam,
    RequestBody,
    RevisionParam,
    clean_path,
    hub_of,
    load_repo,
    repo_url,
    resolve_revision,
)
from cove.server.gitrepo import lfs_pointer
from cove.server.lfsmatch import lfs_patterns, matches
from cove.server.openapi import error_responses, inline_schema
from cove.server.routing import unslash
from cove.server.storage import is_oid

router = APIRouter()
NDJSON = "application/x-ndjson"


class PreuploadFile(RequestBody):
    path: str
    sample: str = Field("", description="base64 of the file's first 512 bytes.")
    size: int = Field(0, ge=0)


class Preupload(RequestBody):
    files: list[PreuploadFile]


def _branch(revision: str) -> str:
    revision = unslash(revision)
    return revision.removeprefix("refs/heads/")


@router.post(
    "/api/{rtype:rtype}/{repo_id:repo}/preupload/{revision}",
    responses=error_responses(401, 403, 404),
)
async def preupload(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam, revision: RevisionParam,
    body: Preupload,
) -> dict:
    """How to upload each file: `regular` (in the commit) or `lfs` (batch API first)."""
    repo, _ = load_repo(request, rtype, repo_id, write=True)
    git = hub_of(request).git(repo)
    try:
        sha = resolve_revision(git, repo, revision)
        attrs = git.entry(sha, ".gitattributes")
        patterns = lfs_patterns(git.read_blob(attrs.oid).decode("utf-8", "replace")) if attrs else []
        out = []
        for f in body.files:
            path = clean_path(f.path)
            try:
                sample = base64.b64decode(f.sample)
            except (binascii.Error, ValueError):
                raise errors.bad_request(f"Invalid base64 sample for {path}.") from None
            lfs = f.size > 0 and (
                f.size >= LFS_SIZE_THRESHOLD or matches(patterns, path) or b"\x00" in sample
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


class CommitHeader(RequestBody):
    summary: str
    description: str | None = None
    parentCommit: str | None = Field(None, description="Fail with 412 unless the branch is here.")


class AddFile(RequestBody):
    path: str
    content: str = Field("", description="The file's bytes, base64.")
    encoding: Literal["base64"] = "base64"


class AddLfsFile(RequestBody):
    path: str
    algo: Literal["sha256"] = "sha256"
    oid: str
    size: int | None = Field(None, description="Absent when copying an LFS file.")


class RemovePath(RequestBody):
    path: str


class HeaderLine(RequestBody):
    key: Literal["header"]
    value: CommitHeader


class FileLine(RequestBody):
    key: Literal["file"]
    value: AddFile


class LfsFileLine(RequestBody):
    key: Literal["lfsFile"]
    value: AddLfsFile


class DeletedFileLine(RequestBody):
    key: Literal["deletedFile"]
    value: RemovePath


class DeletedFolderLine(RequestBody):
    key: Literal["deletedFolder"]
    value: RemovePath


CommitLine = Annotated[
    HeaderLine | FileLine | LfsFileLine | DeletedFileLine | DeletedFolderLine,
    Field(discriminator="key"),
]
_LINE = TypeAdapter(CommitLine)

_COMMIT_BODY = {
    "required": True,
    "description": "One JSON object per line: a `header` (the summary), then the changes.",
    "content": {NDJSON: {"schema": {"type": "array", "items": inline_schema(_LINE)}}},
}


@router.post(
    "/api/{rtype:rtype}/{repo_id:repo}/commit/{revision}",
    responses=error_responses(
        401, 403, 404, 409, 412, 422, 501,
        s409="A path would be both a file and a folder (Conflict).",
        s422="An `lfsFile` whose object was not uploaded (LfsObjectMissing).",
        s501="`create_pr`: pull requests are not supported yet.",
    ),
    openapi_extra={"requestBody": _COMMIT_BODY},
)
async def commit(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam, revision: RevisionParam,
    create_pr: Annotated[bool, Query(description="Open a pull request instead.")] = False,
) -> dict:
    """Commit files (inline, or LFS objects uploaded before) and deletions to a branch."""
    repo, who = load_repo(request, rtype, repo_id, write=True)
    if create_pr:
        raise errors.HubError(
            501, "NotImplemented", "Pull requests are not supported by this server yet: "
            "commit to a branch instead (create_branch, then revision=<branch>)."
        )
    hub = hub_of(request)
    header: CommitHeader | None = None
    changes: list[tuple[str, bytes | None]] = []
    folders: list[str] = []
    xet_files: list[str] = []  # committed Xet files, readable through CAS with this repo's tokens
    raw = await request.body()
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = _LINE.validate_json(line)
        except ValidationError as e:
            raise errors.bad_request(
                errors.validation_message(e.errors(), f"Line {n} of the commit payload")
            ) from None
        value = item.value
        if isinstance(value, CommitHeader):
            header = value
        elif isinstance(value, AddFile):
            path = clean_path(value.path)
            try:
                content = base64.b64decode(value.content, validate=True)
            except (binascii.Error, ValueError):
                raise errors.bad_request(f"Invalid base64 content for {path}.") from None
            changes.append((path, content))
        elif isinstance(value, AddLfsFile):
            path = clean_path(value.path)
            oid, size = value.oid, value.size
            if not is_oid(oid):
                raise errors.bad_request(f"Invalid LFS reference for {path}.")
            stored = hub.objects.size(oid)
            xet_file = None
            if stored is None:  # uploaded through Xet: huggingface_hub names it by sha256
                xet_file = await run_in_threadpool(hub.xet.file_by_sha256, oid)
                stored = xet_file.size if xet_file else None
            if size is None:  # CommitOperationCopy of an LFS file sends the oid alone
                size = stored
            if stored is None or stored != size:
                raise errors.HubError(
                    422, "LfsObjectMissing",
                    f"LFS object {oid} for {path} was not uploaded (or not verified): upload it "
                    "through the LFS batch API before committing.",
                )
            if xet_file is not None:
                xet_files.append(xet_file.hash)
            changes.append((path, lfs_pointer(oid, size)))
        elif isinstance(item, DeletedFileLine):
            changes.append((clean_path(value.path), None))
        else:
            folders.append(clean_path(value.path.rstrip("/")))
    summary = header.summary.strip() if header else ""
    if not summary:
        raise errors.bad_request("The commit needs a summary (the header's 'summary').")
    description = (header.description or "").strip()
    message = summary + ("\n\n" + description if description else "")
    # Granted before the commit, so that no crash leaves a committed file unreadable through
    # CAS; a failed commit's grants reveal nothing: committing its sha256 would do the same.
    for name in xet_files:
        await run_in_threadpool(hub.xet.grant, repo.id, name)
    sha = await run_in_threadpool(
        hub.commit, repo, _branch(revision), changes, folders, message, who, header.parentCommit
    )
    return {
        "commitUrl": f"{repo_url(request, repo)}/commit/{sha}",
        "commitOid": sha,
        "commitMessage": message,
        "pullRequestUrl": None,
    }
