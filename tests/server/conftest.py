"""Fixtures: one live server for the module, with users, an organisation and tokens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.server.live import LiveServer, cove


@dataclass
class Accounts:
    alice_write: str
    alice_read: str
    bob_write: str


def seed_accounts(data) -> Accounts:
    cove("admin", "user", "create", "alice", "--email", "alice@example.com", data=data)
    cove("admin", "user", "create", "bob", data=data)
    cove("admin", "org", "create", "acme", "--member", "alice", data=data)
    return Accounts(
        alice_write=cove("admin", "token", "create", "alice", "--role", "write", "--name", "w", data=data),
        alice_read=cove("admin", "token", "create", "alice", "--role", "read", "--name", "r", data=data),
        bob_write=cove("admin", "token", "create", "bob", "--role", "write", data=data),
    )


def seeded_server(data) -> LiveServer:
    """A started server on `data` with the accounts above (`.accounts`); stop() it after."""
    accounts = seed_accounts(data)
    live = LiveServer(data).start()
    live.accounts = accounts
    return live


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = seeded_server(tmp_path_factory.mktemp("hub"))
    yield live
    live.stop()
