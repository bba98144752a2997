"""Passwords and the schema they need, without a browser."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from cove.server import admin, auth
from cove.server.config import Settings
from cove.server.db import make_engine
from cove.server.hub import Hub


def test_password_hashes_are_salted_and_checked():
    one, two = auth.hash_password("correct horse"), auth.hash_password("correct horse")
    assert one != two and one.startswith("scrypt$")
    assert auth.verify_password("correct horse", one)
    assert not auth.verify_password("correct hors", one)
    assert not auth.verify_password("correct horse", "not-a-hash")


def test_sign_in_by_name_or_email(tmp_path):
    hub = Hub(Settings(data_dir=tmp_path))
    user = admin.create_account(hub, "dora", "user", email="dora@example.com",
                                password="a long secret")
    admin.create_account(hub, "nopass", "user")
    assert auth.authenticate(hub, "dora", "a long secret") == user.id
    assert auth.authenticate(hub, "dora@example.com", "a long secret") == user.id
    assert auth.authenticate(hub, "dora", "a wrong secret") is None
    assert auth.authenticate(hub, "nopass", "") is None  # no password: no web sign-in
    assert auth.authenticate(hub, "nobody", "a long secret") is None
    with pytest.raises(admin.AdminError, match="at least 8"):
        admin.create_account(hub, "shorty", "user", password="short")


def test_an_older_database_gains_the_passwords_table_and_indexes(tmp_path):
    url = f"sqlite:///{tmp_path / 'cove.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:  # as a data folder from before the web pages
        conn.execute(text("DROP TABLE passwords"))
        conn.execute(text("DROP INDEX ix_repo_listing"))
    engine.dispose()
    upgraded = inspect(make_engine(url))
    assert "passwords" in upgraded.get_table_names()
    assert "ix_repo_listing" in {i["name"] for i in upgraded.get_indexes("repositories")}


def test_sign_in_attempts_are_throttled(tmp_path):
    from fastapi.testclient import TestClient

    from cove.server.app import create_app
    from cove.server.web.accounts import _Throttle

    hub = Hub(Settings(data_dir=tmp_path, serving=False))
    admin.create_account(hub, "erin", "user", password="the right one")
    client = TestClient(create_app(hub.settings, hub))
    csrf = client.get("/login").text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]

    def attempt(password: str) -> int:
        return client.post("/login", data={"username": "erin", "password": password,
                                           "csrf_token": csrf}, follow_redirects=False).status_code

    assert [attempt("wrong") for _ in range(_Throttle.LIMIT)] == [401] * _Throttle.LIMIT
    assert attempt("the right one") == 429  # even the right password, until the window passes
