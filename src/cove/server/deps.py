"""What the routers share: the caller, repository lookup, paths, and JSON shapes."""

from __future__ import annotations

import hmac
import posixpath
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import Path, Query, Request
from pydantic import BaseModel, field_validator

from cove.server import errors
from cove.server.db import Repository
from cove.server.gitrepo import Entry
from cove.server.hub import REPO_TYPES, URL_PREFIX, Hub, Principal
from cove.server.routing import unslash

# Path and query parameters as the routes declare them, so that /openapi.json describes them.
RepoTypeParam = Annotated[
    Literal["models", "datasets", "spaces"], Path(description="The kind of repository.")
]
RepoIdParam = Annotated[
    str,
    Path(
        description="`namespace/name`, or a bare `name`; the slash as-is or percent-encoded.",
        pattern=r"^[^/]+(/[^/]+)?$",
        examples=["alice/my-model"],
    ),
]
RevisionParam = Annotated[
    str,
    Path(
        description="A branch, tag, `refs/...` name or 40-hex commit id, percent-encoded "
        "with no safe characters (`refs%2Fpr%2F1`).",
        examples=["main"],
    ),
]
RepoPathParam = Annotated[
    str, Path(description="A path in the repository, slashes kept.", examples=["config.json"])
]
# Far past any listing, yet offset + page stays within SQL's BIGINT and Python's islice
# (sys.maxsize): beyond those a cursor failed in the database or in itertools, a 500.
MAX_CURSOR = 2**62
CursorParam = Annotated[
    int | None,
    Query(ge=0, le=MAX_CURSOR, description="Where the page starts (from the `Link` header)."),
]


class RequestBody(BaseModel):
    """Base of the JSON request bodies: text must be storable.

    Python's JSON parser lets lone surrogates (`"\\ud800"`) through, and they fail later, at
    the first `.encode()` in git or SQL; refused here, they are a clear 400.
    """

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        for text in _strings(value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"invalid text {text!r}: lone surrogate") from None
        return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)


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


# The pages' session cookie (written by web/core.py, which imports these), read here too: the
# serving endpoints take it for the widget, from the same origin only (`serving_caller`).
SESSION_COOKIE = "cove_session"
SESSION_SALT = "cove-web-session"
SESSION_DAYS = 30
CSRF_HEADER = "X-CSRF-Token"


def session_of(request: Request) -> dict:
    """The pages' signed session cookie of this request (an empty dict when absent or forged)."""
    from itsdangerous import BadSignature, URLSafeTimedSerializer

    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return {}
    signer = URLSafeTimedSerializer(hub_of(request).settings.secret, salt=SESSION_SALT)
    try:
        session = signer.loads(raw, max_age=SESSION_DAYS * 86400)
    except BadSignature:
        return {}
    return session if isinstance(session, dict) else {}


def serving_caller(request: Request) -> Principal | None:
    """The caller of a serving endpoint: a bearer token as everywhere (`principal`), else the
    signed-in web session, for the model pages' widget.

    The cookie counts only with the session's CSRF token in the X-CSRF-Token header, which a
    page of this site sends and no other site can read; a POST (or any unsafe method) whose
    cookie names a signed-in user without that header, or with a wrong one, is refused (403
    CsrfFailed), so another site cannot make a visitor's browser run private models. A GET
    without the header is anonymous. Where a bearer token is sent, the cookie is ignored.
    """
    if request.headers.get("authorization"):
        return principal(request)
    session = session_of(request)
    if "uid" not in session:
        return None
    sent = request.headers.get(CSRF_HEADER)
    csrf = session.get("csrf")
    if sent and isinstance(csrf, str) and hmac.compare_digest(sent, csrf):
        return hub_of(request).principal_for_account(session["uid"])
    if request.method in ("GET", "HEAD", "OPTIONS") and not sent:
        return None
    raise errors.HubError(403, "CsrfFailed",
                          f"A request signed in by the session cookie needs the page's "
                          f"{CSRF_HEADER} header: reload the page and try again, or send a "
                          "token (Authorization: Bearer).")


def repo_type(plural: str) -> str:
    return REPO_TYPES[plural]


def load_repo(
    request: Request, plural_or_type: str, repo_id: str, write: bool = False
) -> tuple[Repository, Principal | None]:
    hub = hub_of(request)
    who = principal(request)
    rtype = REPO_TYPES.get(plural_or_type, plural_or_type)
    with hub.session() as s:
        # Generated clients percent-encode the id's slash, which routing turns into NUL.
        repo = hub.find_repo(s, rtype, unslash(repo_id), who, write=write)
    return repo, who


def resolve_revision(git, repo: Repository, revision: str) -> str:
    revision = unslash(revision)
    sha = git.resolve(revision)
    if sha is None:
        raise errors.revision_not_found(repo.repo_id, revision)
    return sha


def clean_path(path: str) -> str:
    """A repository path, refusing traversal, absolute paths, control characters and
    anything under .git."""
    path = unslash(path)
    if not path or "\\" in path or any(c < " " or c == "\x7f" for c in path):
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


def next_page(request: Request, key: str, value: int) -> str:
    """The `Link` header to the next page: this request's URL with `key=value`.

    Built from the raw path: the routed one holds NUL for each encoded slash (`routing`),
    which is no valid header character.
    """
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.split(b"?", 1)[0].decode("latin-1")
    params = [(k, v) for k, v in request.query_params.multi_items() if k != key]
    params.append((key, str(value)))
    return f'<{base_url(request)}{path}?{urlencode(params)}>; rel="next"'


def tree_entry_json(e: Entry, xet_hashes: dict[str, str] | None = None) -> dict:
    """A tree entry; `xet_hashes` (sha256 -> Xet file hash) adds `xetHash` to LFS files
    uploaded through Xet, which huggingface_hub >= 1.22 downloads through CAS without a HEAD."""
    out = {"type": e.type, "oid": e.oid, "size": e.size, "path": e.path}
    if e.lfs:
        out["lfs"] = {"oid": e.lfs.oid, "size": e.lfs.size, "pointerSize": e.lfs.pointer_size}
        if xet_hashes and e.lfs.oid in xet_hashes:
            out["xetHash"] = xet_hashes[e.lfs.oid]
    return out


def sibling_json(e: Entry, blobs: bool) -> dict:
    out: dict = {"rfilename": e.path}
    if blobs:
        out["size"] = e.size
        out["blobId"] = e.oid
        if e.lfs:
            out["lfs"] = {"size": e.lfs.size, "sha256": e.lfs.oid, "pointerSize": e.lfs.pointer_size}
    return out
