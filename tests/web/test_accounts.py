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
