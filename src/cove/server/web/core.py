"""What every page shares: templates, the signed session cookie, CSRF, errors as pages.

The session is one signed cookie (itsdangerous, keyed by the server's secret) holding a CSRF
token and, once signed in, the user's id. Every visitor gets one on their first page, so the
sign-in and sign-up forms carry a token too; a POST whose hidden `csrf_token` differs from the
cookie's is refused with 403. The serving endpoints read the same cookie for the model pages'
widget, with the token in an X-CSRF-Token header (`deps.serving_caller`).
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.convertors import register_url_convertor
from starlette.datastructures import FormData

from cove.server.deps import SESSION_COOKIE, SESSION_DAYS, SESSION_SALT
from cove.server.errors import HubError
from cove.server.hub import RESERVED, URL_PREFIX, Hub, Principal
from cove.server.routing import _Fixed, unslash

HERE = Path(__file__).parent
CSRF_FIELD = "csrf_token"

# Page paths: `{kind:kind}{owner:owner}/{name}` reads /alice/x, /datasets/alice/x and
# /spaces/alice/x with one pattern. An owner is never a reserved name (api, static, ...) nor
# the OpenAI API's v1, so API paths keep their own answers (404 with X-Error-Code, 405 for a
# wrong method) instead of becoming repository pages.
KINDS = {"": "model", "datasets/": "dataset", "spaces/": "space"}
register_url_convertor("kind", _Fixed("(?:datasets/|spaces/)?"))
_RESERVED = "|".join(sorted(map(re.escape, RESERVED | {"v1"})))
register_url_convertor("owner", _Fixed(rf"(?!(?i:{_RESERVED})(?:/|$))[^/]+"))

env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def filesize(n: int | None) -> str:
    """1234567 -> '1.23 MB', as the Hub writes sizes."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("Bytes", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "Bytes" else f"{size:.3g} {unit}"
        size /= 1000
    return ""


def ago(when: datetime | None) -> str:
    """'3 days ago': how long since `when` (naive UTC, as the database stores it)."""
    if when is None:
        return ""
    seconds = (datetime.now(timezone.utc).replace(tzinfo=None) - when).total_seconds()
    for span, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400, "day"),
                       (3600, "hour"), (60, "minute")):
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def compact(n: int) -> str:
    """12345 -> '12.3k'."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.3g}k"
    return f"{n / 1_000_000:.3g}M"


def repo_href(repo_type: str, repo_id: str, *parts: str) -> str:
    """A repository's page URL on the Hub's scheme: /alice/x, /datasets/alice/x/tree/main."""
    tail = "".join(f"/{p}" for p in parts if p)
    return f"/{URL_PREFIX[repo_type]}{repo_id}{tail}"


def rev_part(revision: str) -> str:
    """A revision in a URL: slashes encoded (refs/pr/1 -> refs%2Fpr%2F1) as the Hub does."""
    return quote(revision, safe="")


env.filters.update(filesize=filesize, ago=ago, compact=compact, rev=rev_part,
                   path=lambda p: quote(p, safe="/"))
env.globals.update(repo_href=repo_href)


@dataclass
class Visitor:
    """The browser at the other end: its session and, when signed in, its principal."""

    session: dict
    who: Principal | None
    dirty: bool  # the cookie must be (re)written on the answer

    @property
    def csrf(self) -> str:
        return self.session["csrf"]


def _signer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(hub_of(request).settings.secret, salt=SESSION_SALT)


def hub_of(request: Request) -> Hub:
    return request.app.state.hub


def visitor(request: Request) -> Visitor:
    """The visitor of this request, read from its cookie once (kept on request.state)."""
    found = getattr(request.state, "visitor", None)
    if found is not None:
        return found
    session: dict = {}
    raw = request.cookies.get(SESSION_COOKIE)
    if raw:
        try:
            session = _signer(request).loads(raw, max_age=SESSION_DAYS * 86400)
        except BadSignature:
            session = {}
    dirty = not isinstance(session, dict) or "csrf" not in session
    if dirty:
        session = {"csrf": secrets.token_urlsafe(24)}
    who = None
    if "uid" in session:
        who = hub_of(request).principal_for_account(session["uid"])
        if who is None:  # the account is gone: back to anonymous
            session, dirty = {"csrf": secrets.token_urlsafe(24)}, True
    found = Visitor(session, who, dirty)
    request.state.visitor = found
    return found


def start_session(request: Request, account_id: int | None) -> None:
    """Sign in (or out, with None): a fresh session with a new CSRF token."""
    session: dict = {"csrf": secrets.token_urlsafe(24)}
    if account_id is not None:
        session["uid"] = account_id
    request.state.visitor = Visitor(session, None, True)


def _store_session(request: Request, response: Response) -> None:
    v = getattr(request.state, "visitor", None)
    if v is not None and v.dirty:
        response.set_cookie(
            SESSION_COOKIE, _signer(request).dumps(v.session), max_age=SESSION_DAYS * 86400,
            httponly=True, samesite="lax", secure=request.url.scheme == "https", path="/",
        )


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The page `template` with the visitor, the CSRF token and the server's settings."""
    v = visitor(request)
    settings = hub_of(request).settings
    html = env.get_template(template).render(
        request=request, who=v.who, csrf=v.csrf, csrf_field=CSRF_FIELD,
        allow_join=settings.allow_join, serving_enabled=settings.serving, **context,
    )
    response = HTMLResponse(html, status_code=status)
    _store_session(request, response)
    return response


def redirect(request: Request, url: str) -> RedirectResponse:
    """A 303 after a form (the browser then GETs `url`), carrying any new session cookie."""
    response = RedirectResponse(url, status_code=303)
    _store_session(request, response)
    return response


def sign_in_first(request: Request) -> RedirectResponse:
    target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return redirect(request, f"/login?next={target}")


async def checked_form(request: Request) -> FormData:
    """The POSTed form, refused (403) unless it carries this session's CSRF token."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent, visitor(request).csrf):
        raise HubError(403, "CsrfFailed",
                       "This form is stale or did not come from this site: reload the page "
                       "and submit it again.")
    return form


class PageRoute(APIRoute):
    """A page route: errors (404 for a hidden repository, 403, ...) answer as HTML pages."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except HubError as e:
                return error_page(request, e)

        return page_handler


def error_page(request: Request, error: HubError) -> HTMLResponse:
    """The error as a page, with the API's X-Error-Code header for scripts and tests."""
    titles = {403: "Forbidden", 404: "Not found", 400: "Bad request", 401: "Sign in needed"}
    response = render(request, "error.html", status=error.status,
                      title=titles.get(error.status, "Error"), message=error.message)
    response.headers["X-Error-Code"] = error.code
    return response


def param(value: str) -> str:
    """A path parameter as the client meant it (routing turns an encoded slash into NUL)."""
    return unslash(value)
