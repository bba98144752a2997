"""One pooled HTTP client for the whole process, and the Hub's error mapping."""

from __future__ import annotations

import threading

import httpx

from cove import __version__
from cove.hub import config
from cove.hub.errors import (
    BadRequestError,
    GatedRepoError,
    HubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

_client: httpx.Client | None = None
_lock = threading.Lock()
USER_AGENT = f"cove/{__version__}; python httpx/{httpx.__version__}"


def client() -> httpx.Client:
    """The process-wide client: one connection pool, sized for parallel downloads."""
    global _client
    with _lock:
        if _client is None:
            _client = httpx.Client(
                timeout=httpx.Timeout(30.0, connect=10.0),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
                headers={"user-agent": USER_AGENT},
                follow_redirects=False,
            )
        return _client


def auth_headers(token: str | bool | None) -> dict[str, str]:
    """`token=None` uses the configured token, `False` sends none, a string is used as is."""
    if token is False:
        return {}
    value = config.get_token() if token in (None, True) else token
    return {"authorization": f"Bearer {value}"} if value else {}


def check_online() -> None:
    if config.offline():
        raise OfflineModeIsEnabled(
            "Offline mode is on (COVE_OFFLINE / HF_HUB_OFFLINE): no request to the Hub was made."
        )


def request(method: str, url: str, *, token: str | bool | None = None, **kwargs) -> httpx.Response:
    check_online()
    headers = {**auth_headers(token), **kwargs.pop("headers", {})}
    return client().request(method, url, headers=headers, **kwargs)


def raise_for_status(
    response: httpx.Response, repo_id: str | None = None, repo_type: str | None = None
) -> None:
    """Raise the specific error the server's X-Error-Code names, with a useful message."""
    if response.is_success:
        return
    code = response.headers.get("X-Error-Code")
    server = response.headers.get("X-Error-Message") or _body_error(response)
    what = f"{repo_type or 'model'} repository {repo_id!r}" if repo_id else "the repository"
    url = str(response.request.url)
    if code == "RepoNotFound" or (response.status_code == 401 and repo_id and code is None):
        raise RepositoryNotFoundError(
            f"{response.status_code} Repository Not Found for url: {url}.\nCheck the id of "
            f"{what}; if it is private, pass a token that can read it (cove login, or "
            f"COVE_TOKEN / HF_TOKEN). {server}",
            response,
        )
    if code == "GatedRepo":
        raise GatedRepoError(f"{response.status_code} Access to {what} is restricted: {server}",
                             response)
    if code == "RevisionNotFound":
        raise RevisionNotFoundError(
            f"{response.status_code} Revision Not Found for url: {url}.\n{server}\nCheck the "
            "branch, tag or commit id (list_repo_refs shows them).", response)
    if code == "EntryNotFound":
        raise RemoteEntryNotFoundError(
            f"{response.status_code} Entry Not Found for url: {url}.\n{server}", response)
    if response.status_code == 400:
        raise BadRequestError(f"400 Bad Request for url: {url}.\n{server}", response)
    hint = {
        401: "Your token is missing or invalid: run `cove login` or set COVE_TOKEN / HF_TOKEN.",
        403: "Your token does not allow this: a write action needs a token with the write role.",
        409: "It conflicts with what exists (the repository or ref already exists?).",
        412: "The branch moved since your parent commit: fetch the new head and try again.",
        429: "Rate limited: wait and try again.",
    }.get(response.status_code, "")
    raise HubHTTPError(
        f"{response.status_code} {response.reason_phrase} for url: {url}.\n{server}\n{hint}".rstrip(),
        response,
    )


def _body_error(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    return str(data.get("error", "")) if isinstance(data, dict) else ""
