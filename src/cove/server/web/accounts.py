"""Accounts on the pages: sign in and out, sign up, tokens, new repositories, profiles."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import desc, select
from starlette.concurrency import run_in_threadpool

from cove.server import admin, auth, search
from cove.server.db import Account, Repository, Token
from cove.server.errors import HubError
from cove.server.hub import Principal
from cove.server.web.core import (
    PageRoute,
    checked_form,
    hub_of,
    redirect,
    render,
    sign_in_first,
    start_session,
    visitor,
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)
profile_router = APIRouter(route_class=PageRoute, include_in_schema=False)


class _Throttle:
    """Failed sign-ins per (client address, name): after LIMIT within WINDOW seconds, the
    name is refused from that address until the oldest failure ages out (guessing stays
    slow even where scrypt alone would allow thousands of tries an hour)."""

    LIMIT, WINDOW = 10, 600.0

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], list[float]] = {}

    def _recent(self, key: tuple[str, str]) -> list[float]:
        now = time.monotonic()
        recent = [t for t in self._failures.get(key, []) if now - t < self.WINDOW]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return recent

    def blocked(self, key: tuple[str, str]) -> bool:
        return len(self._recent(key)) >= self.LIMIT

    def failed(self, key: tuple[str, str]) -> None:
        if len(self._failures) > 100_000:  # bounded: forget everyone rather than grow
            self._failures.clear()
        self._failures.setdefault(key, []).append(time.monotonic())


_throttle = _Throttle()


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (no //evil.example)."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", next=_safe_next(next), error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await checked_form(request)
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    key = (request.client.host if request.client else "?", name.strip().lower())
    if _throttle.blocked(key):
        return render(request, "login.html", status=429, next=target, username=name,
                      error="Too many failed attempts: try again in a few minutes.")
    uid = await run_in_threadpool(auth.authenticate, hub_of(request), name.strip(), password)
    if uid is None:
        _throttle.failed(key)
        return render(request, "login.html", status=401, next=target,
                      error="Wrong username or password.", username=name)
    start_session(request, uid)
    return redirect(request, target)


@router.get("/logout", response_class=HTMLResponse)
def logout_page(request: Request) -> HTMLResponse:
    """Signing out changes state, so it is a form (POST with its CSRF token), not a link."""
    return render(request, "logout.html")


@router.post("/logout")
async def logout(request: Request) -> Response:
    await checked_form(request)
    start_session(request, None)
    return redirect(request, "/")


def _join_closed() -> HubError:
    return HubError(404, "NotFound", "Sign-up is closed on this server: ask its administrator "
                    "for an account.")


@router.get("/join", response_class=HTMLResponse)
def join_page(request: Request) -> HTMLResponse:
    if not hub_of(request).settings.allow_join:
        raise _join_closed()
    return render(request, "join.html", error=None)


@router.post("/join", response_class=HTMLResponse)
async def join(request: Request) -> Response:
    hub = hub_of(request)
    if not hub.settings.allow_join:
        raise _join_closed()
    form = await checked_form(request)
    name, email = str(form.get("username", "")).strip(), str(form.get("email", "")).strip()
    password = str(form.get("password", ""))
    try:
        account = await run_in_threadpool(
            admin.create_account, hub, name, "user", "", email or None, password
        )
    except (admin.AdminError, HubError) as e:
        message = e.message if isinstance(e, HubError) else str(e)
        return render(request, "join.html", status=400, error=message, username=name,
                      email=email)
    start_session(request, account.id)
    return redirect(request, f"/{name}")


@router.get("/settings/tokens", response_class=HTMLResponse)
def tokens_page(request: Request) -> Response:
    who = visitor(request).who
    if who is None:
        return sign_in_first(request)
    return _tokens(request, who, created=None)


def _tokens(request: Request, who: Principal, created: str | None,
            error: str | None = None) -> HTMLResponse:
    with hub_of(request).session() as s:
        tokens = s.scalars(select(Token).where(Token.user_id == who.account.id)
                           .order_by(Token.id)).all()
    return render(request, "tokens.html", tokens=tokens, created=created, error=error,
                  status=400 if error else 200)


@router.post("/settings/tokens", response_class=HTMLResponse)
async def create_token(request: Request) -> Response:
    """A new token, shown on this answer only (the server keeps its hash)."""
    form = await checked_form(request)
    who = visitor(request).who
    if who is None:
        return sign_in_first(request)
    name, role = str(form.get("name", "")).strip(), str(form.get("role", "read"))
    if not name or len(name) > 100 or role not in ("read", "write"):
        return _tokens(request, who, None, "A token needs a name (at most 100 characters) "
                       "and a role, read or write.")
    token = await run_in_threadpool(admin.create_token, hub_of(request), who.name, role, name)
    return _tokens(request, who, token)


@router.post("/settings/tokens/{token_id}/delete")
async def revoke_token(request: Request, token_id: int) -> Response:
    await checked_form(request)
    who = visitor(request).who
    if who is None:
        return sign_in_first(request)
    with hub_of(request).session() as s:
        row = s.get(Token, token_id)
        if row is None or row.user_id != who.account.id:  # only one's own tokens
            raise HubError(404, "NotFound", "No such token.")
        s.delete(row)
        s.commit()
    return redirect(request, "/settings/tokens")


def _owners(who: Principal) -> list[str]:
    return [who.name, *who.writable_orgs]


def _new_page(repo_type: str):
    def page(request: Request) -> Response:
        who = visitor(request).who
        if who is None:
            return sign_in_first(request)
        return render(request, "new.html", repo_type=repo_type, owners=_owners(who),
                      error=None, form={})

    async def create(request: Request) -> Response:
        form = await checked_form(request)
        who = visitor(request).who
        if who is None:
            return sign_in_first(request)
        owner, name = str(form.get("owner", who.name)), str(form.get("name", "")).strip()
        private = form.get("visibility") == "private"
        try:
            await run_in_threadpool(hub_of(request).create_repo, repo_type, owner, name, who,
                                    private)
        except HubError as e:
            return render(request, "new.html", status=e.status, repo_type=repo_type,
                          owners=_owners(who), error=e.message, form=form)
        prefix = "" if repo_type == "model" else "datasets/"
        return redirect(request, f"/{prefix}{owner}/{name}")

    return page, create


for _path, _type in (("/new", "model"), ("/new-dataset", "dataset")):
    _get, _post = _new_page(_type)
    router.add_api_route(_path, _get, methods=["GET"], response_class=HTMLResponse,
                         name=f"web_new_{_type}")
    router.add_api_route(_path, _post, methods=["POST"], response_class=HTMLResponse,
                         name=f"web_create_{_type}")


@profile_router.get("/{owner:owner}", response_class=HTMLResponse)
def profile(request: Request, owner: str) -> HTMLResponse:
    """A user's or organisation's page: its repositories the visitor may see."""
    who = visitor(request).who
    with hub_of(request).session() as s:
        account = s.scalar(select(Account).where(Account.name == owner))
        if account is None:
            raise HubError(404, "NotFound", f"No user or organisation named {owner!r}.")
        groups = []
        for repo_type, title in (("model", "Models"), ("dataset", "Datasets"),
                                 ("space", "Spaces")):
            q = search.RepoQuery(repo_type, who, author=owner)
            rows = s.scalars(q.select().order_by(desc(Repository.last_modified)).limit(100)).all()
            groups.append((title, repo_type, rows, search.count(s, q)))
    return render(request, "profile.html", account=account, groups=groups)
