"""Hub errors: every error response carries X-Error-Code and X-Error-Message.

The huggingface_hub client maps errors by these headers, not by status code, so a missing
header turns a clear "file not found" into a vague connection error in transformers.
"""

from __future__ import annotations

import re


class HubError(Exception):
    """An error answered to the client as JSON with the Hub's error headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}  # more fields for the JSON body


def repo_not_found(repo_id: str) -> HubError:
    # Same answer for "missing" and "private and not yours": never reveal that it exists.
    return HubError(
        404,
        "RepoNotFound",
        f"Repository not found: {repo_id}. Check the name, or authenticate with a token "
        "that can read it.",
    )


def revision_not_found(repo_id: str, revision: str) -> HubError:
    return HubError(404, "RevisionNotFound", f"Invalid rev id: {revision} in {repo_id}")


def entry_not_found(repo_id: str, path: str, commit: str | None = None) -> HubError:
    headers = {"X-Repo-Commit": commit} if commit else {}
    return HubError(
        404, "EntryNotFound", f"Entry not found: {path} in {repo_id}", headers=headers
    )


def bad_request(message: str, code: str = "BadRequest") -> HubError:
    return HubError(400, code, message)


def unauthorized(message: str = "Invalid credentials in Authorization header") -> HubError:
    return HubError(401, "Unauthorized", message)


def forbidden(message: str) -> HubError:
    return HubError(403, "Forbidden", message)


def conflict(message: str, code: str = "Conflict", extra: dict | None = None) -> HubError:
    return HubError(409, code, message, extra=extra)


def validation_message(problems: list[dict], prefix: str = "Invalid request") -> str:
    """`where: what` for each of pydantic's `problems`, without the input (it may be a
    whole body, or bytes)."""
    parts = []
    for err in problems:
        where = ".".join(str(part) for part in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", "invalid"))
    return f"{prefix}: " + "; ".join(parts)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def header_safe(text: str) -> str:
    """`text` as one latin-1 header line: messages quote user input (paths, revisions), and
    a CR, NUL or non-latin-1 character in a header would make the server drop the answer."""
    return _CONTROL.sub(" ", text).encode("latin-1", "replace").decode("latin-1")


def error_response(err: HubError):
    from fastapi.responses import JSONResponse

    headers = {
        "X-Error-Code": err.code,
        "X-Error-Message": header_safe(err.message),
        **err.headers,
    }
    body = {"error": err.message, **err.extra}
    return JSONResponse(body, status_code=err.status, headers=headers)
