"""Routing on the raw path: repository ids, repository types and encoded slashes."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.convertors import Convertor, register_url_convertor

from cove.server.errors import HubError, error_response

# Revisions arrive percent-encoded with safe="" (refs/pr/1 -> refs%2Fpr%2F1) while file paths
# keep their slashes. Starlette decodes %2F before routing, which would make the two
# indistinguishable, so an encoded slash is routed as NUL and turned back by `unslash`.
ENCODED_SLASH = "\x00"


def unslash(value: str) -> str:
    return value.replace(ENCODED_SLASH, "/")


# Percent-encoded control characters. In a path they are refused: no repository name, file
# path or revision holds one, and Starlette's `{x:path}` would not even match a newline (a
# misleading 404). In a query only NUL is (SQL text cannot hold it).
_PATH_CONTROL = re.compile(rb"%(?:[01][0-9a-fA-F]|7[fF])")


class RawPathMiddleware:
    """Routes on the raw path: `%2F` survives as NUL (see `unslash`); refuses control
    characters in the URL with a Hub error before any routing."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("raw_path"):
            raw = scope["raw_path"].split(b"?", 1)[0]
            if _PATH_CONTROL.search(raw) or b"%00" in scope.get("query_string", b""):
                error = HubError(400, "BadRequest", "Control character (such as NUL) in the URL")
                await error_response(error)(scope, receive, send)
                return
            raw = raw.replace(b"%2F", b"%00").replace(b"%2f", b"%00")
            scope = dict(scope, path=unquote_to_bytes(raw).decode("utf-8", "replace"))
        await self.app(scope, receive, send)


class _Fixed(Convertor):
    def __init__(self, regex: str) -> None:
        self.regex = regex

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# `name` or `namespace/name`: ids without a namespace (gpt2) arrive too.
register_url_convertor("repo", _Fixed(r"[^/]+(?:/[^/]+)?"))
register_url_convertor("rtype", _Fixed("models|datasets|spaces"))
