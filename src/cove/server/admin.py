"""Account administration, used by `cove admin ...`: users, organisations and tokens."""

from __future__ import annotations

from sqlalchemy import select

from cove.server import auth
from cove.server.db import Account, Membership, Token, hash_token, new_token
from cove.server.hub import RESERVED, Hub, validate_name


class AdminError(ValueError):
    pass


def _account(s, name: str, type_: str | None = None) -> Account:
    row = s.scalar(select(Account).where(Account.name == name))
    if row is None or (type_ and row.type != type_):
        raise AdminError(f"No {type_ or 'account'} named {name!r}.")
    return row


def create_account(hub: Hub, name: str, type_: str, fullname: str = "",
                   email: str | None = None, password: str | None = None) -> Account:
    """A new user or organisation; a user given a `password` can sign in on the pages."""
    validate_name(name, "account name")
    if password is not None:
        try:
            auth.check_strength(password)
        except ValueError as e:
            raise AdminError(str(e)) from None
    if name.lower() in RESERVED:
        raise AdminError(f"{name!r} is reserved for the server's routes.")
    with hub.session() as s:
        if s.scalar(select(Account.id).where(Account.name == name)) is not None:
            raise AdminError(f"An account named {name!r} already exists.")
        row = Account(name=name, type=type_, fullname=fullname or name, email=email)
        s.add(row)
        s.commit()
    if password is not None:
        auth.set_password(hub, row.id, password)
    return row


def add_member(hub: Hub, org: str, user: str, role: str = "write") -> None:
    if role not in ("read", "write", "admin"):
        raise AdminError("A member's role is read, write or admin.")
    with hub.session() as s:
        o, u = _account(s, org, "org"), _account(s, user, "user")
        existing = s.get(Membership, (o.id, u.id))
        if existing:
            existing.role = role
        else:
            s.add(Membership(org_id=o.id, user_id=u.id, role=role))
        s.commit()


def create_token(hub: Hub, user: str, role: str, name: str) -> str:
    """A new token for `user`; the plain value is returned once and only its hash is kept."""
    if role not in ("read", "write"):
        raise AdminError("A token's role is read or write.")
    token = new_token()
    with hub.session() as s:
        u = _account(s, user, "user")
        s.add(Token(user_id=u.id, name=name, role=role, hash=hash_token(token)))
        s.commit()
    return token


def list_tokens(hub: Hub, user: str) -> list[tuple[str, str, str]]:
    with hub.session() as s:
        u = _account(s, user, "user")
        rows = s.scalars(select(Token).where(Token.user_id == u.id).order_by(Token.id)).all()
        return [(t.name, t.role, t.created_at.isoformat(timespec="seconds")) for t in rows]


def revoke_token(hub: Hub, user: str, name: str) -> int:
    with hub.session() as s:
        u = _account(s, user, "user")
        rows = s.scalars(select(Token).where(Token.user_id == u.id, Token.name == name)).all()
        for t in rows:
            s.delete(t)
        s.commit()
        return len(rows)
