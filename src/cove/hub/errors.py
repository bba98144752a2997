"""Exceptions of the hub client, with the huggingface_hub names, and messages that say what to do."""

from __future__ import annotations

import httpx


class HubHTTPError(httpx.HTTPStatusError, OSError):
    """An HTTP error from the Hub; `server_message` is what the server said."""

    def __init__(self, message: str, response: httpx.Response) -> None:
        httpx.HTTPStatusError.__init__(self, message, request=response.request, response=response)
        self.server_message = response.headers.get("X-Error-Message", "")
        self.request_id = response.headers.get("X-Request-Id")

    def __str__(self) -> str:
        return self.args[0]


HfHubHTTPError = HubHTTPError


class RepositoryNotFoundError(HubHTTPError):
    """The repository does not exist, or it is private and the token cannot read it."""


class GatedRepoError(RepositoryNotFoundError):
    """The repository is gated: request access on its page, then use a token."""


class RevisionNotFoundError(HubHTTPError):
    """The branch, tag or commit does not exist in the repository."""


class EntryNotFoundError(Exception):
    """The file does not exist in the repository at that revision (remote or cached)."""


class RemoteEntryNotFoundError(HubHTTPError, EntryNotFoundError):
    """The server says the file does not exist at that revision."""


class LocalEntryNotFoundError(FileNotFoundError, EntryNotFoundError):
    """The file is not in the local cache and the Hub cannot be reached (or offline mode)."""


class BadRequestError(HubHTTPError, ValueError):
    """The server refused the request as invalid."""


class OfflineModeIsEnabled(ConnectionError):
    """A network call was attempted while COVE_OFFLINE / HF_HUB_OFFLINE is set."""


class LocalTokenNotFoundError(EnvironmentError):
    """No token: run `cove login` or set COVE_TOKEN / HF_TOKEN."""


class CorruptedDownloadError(OSError):
    """Downloaded bytes do not match the announced size or sha256; nothing was cached."""


class FileMetadataError(OSError):
    """The server did not send the commit, ETag or size of a file."""
