"""Fixtures: one live `cove serve` for the module, with alice, bob, the acme org and tokens."""

from __future__ import annotations

import pytest

from tests.server.conftest import seeded_server


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    live = seeded_server(tmp_path_factory.mktemp("hub-client"))
    yield live
    live.stop()
