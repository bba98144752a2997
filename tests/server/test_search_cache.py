"""The listing summary's cache (cove.server.search.summary) never keeps what a reader saw
while a commit was landing."""

from __future__ import annotations

from sqlalchemy import event

from cove.server import admin, search
from cove.server.config import Settings
from cove.server.hub import Hub, Principal


def test_a_listing_read_while_a_commit_lands_is_not_kept(tmp_path):
    hub = Hub(Settings(data_dir=tmp_path))
    alice = admin.create_account(hub, "alice", "user")
    who = Principal(alice, "write", "t", [], [])
    hub.create_repo("model", "alice", "first", who, False)

    def total() -> int:
        with hub.session() as s:
            return search.summary(s, search.RepoQuery("model"))[0]

    assert total() == 1
    seen = []

    # A reader on another connection between the commit's start and its landing: it sees
    # the old rows (SQLite keeps them readable until the commit is done).
    def read_in_the_gap(_conn) -> None:
        if not seen:
            seen.append(total())

    event.listen(hub.engine, "commit", read_in_the_gap)
    try:
        hub.create_repo("model", "alice", "second", who, False)
    finally:
        event.remove(hub.engine, "commit", read_in_the_gap)
    assert seen == [1]
    assert total() == 2  # not the count cached in the gap
