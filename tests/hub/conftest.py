"""Fixtures: one live `cove serve` for the module, with alice, bob, the acme org and tokens."""

from __future__ import annotations

import pytest

from tests.server.conftest import seed_accounts
from tests.server.live import LiveServer


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    data = tmp_path_factory.mktemp("hub-client")
    accounts = seed_accounts(data)
    live = LiveServer(data).start()
    live.accounts = accounts
    yield live
    live.stop()
