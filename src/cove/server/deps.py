"""What the routers share: the caller, repository lookup, paths, and JSON shapes."""

from __future__ import annotations

import posixpath
from datetime import datetime

from fastapi import Request

from cove.server import errors
from cove.server.db import Repository
from cove.server.gitrepo import Entry
from cove.server.hub import REPO_TYPES, URL_PREFIX, Hub, Principal
from cove.server.routing import unslash


def hub_of(request: Request) -> Hub:
    return request.app.state.hub


def principal(request: Request) -> Principal | None:
    """The caller from `Authorization: Bearer <token>`; None when anonymous; 401 if bad."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.unauthorized()
    who = hub_of(request).principal_for_token(token.strip())
    if who is None:
        raise errors.unauthorized()
    return who


def repo_type(plural: str) -> str:
    return REPO_TYPES[plural]


def load_repo(
    request: Request, plural_or_type: str, repo_id: str, write: bool = False
) -> tuple[Repository, Principal | None]:
    hub = hub_of(request)
    who = principal(request)
    rtype = REPO_TYPES.get(plural_or_type, plural_or_type)
    with hub.session() as s:
        repo = hub.find_repo(s, rtype, repo_id, who, write=write)
    return repo, who


def resolve_revision(git, repo: Repository, revision: str) -> str:
    revision = unslash(revision)
    sha = git.resolve(revision)
    if sha is None:
        raise errors.revision_not_found(repo.repo_id, revision)
    return sha


def clean_path(path: str) -> str:
    """A repository path, refusing traversal, absolute paths and anything under .git."""
    path = unslash(path)
    if not path or "\x00" in path or "\\" in path:
        raise errors.bad_request(f"Invalid path {path!r}", code="InvalidPath")
    if path.startswith("/"):
        raise errors.bad_request(f"Invalid path {path!r}: absolute paths are not allowed",
                                 code="InvalidPath")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise errors.bad_request(f"Invalid path {path!r}: no empty, '.' or '..' parts",
                                 code="InvalidPath")
    if any(p == ".git" for p in parts):
        raise errors.bad_request(f"Invalid path {path!r}: '.git' is reserved", code="InvalidPath")
    return posixpath.normpath(path)


def iso(dt: datetime | None) -> str | None:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z" if dt else None


def repo_url(request: Request, repo: Repository) -> str:
    return f"{base_url(request)}/{URL_PREFIX[repo.type]}{repo.repo_id}"


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def tree_entry_json(e: Entry) -> dict:
    out = {"type": e.type, "oid": e.oid, "size": e.size, "path": e.path}
    if e.lfs:
        out["lfs"] = {"oid": e.lfs.oid, "size": e.lfs.size, "pointerSize": e.lfs.pointer_size}
    return out


def sibling_json(e: Entry, blobs: bool) -> dict:
    out: dict = {"rfilename": e.path}
    if blobs:
        out["size"] = e.size
        out["blobId"] = e.oid
        if e.lfs:
            out["lfs"] = {"size": e.lfs.size, "sha256": e.lfs.oid, "pointerSize": e.lfs.pointer_size}
    return out


def truthy(value: str | None) -> bool:
    """Boolean query flags arrive as true/True/1 depending on the client's HTTP library."""
    return value is not None and value.lower() in ("1", "true", "yes", "on")
