"""The proxy's own answers, in process: a static Space (nothing to build) whose visibility,
id and existence change under it. The manager caches each Space's row for the proxy; every
change must show on the very next request (a Space turned private is never served to a
stranger after the change returned)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cove.server import admin
from cove.server.app import create_app
from cove.server.config import Settings

INDEX = b"<h1>cached?</h1>"


@pytest.fixture
def site(tmp_path):
    """(client, hub, repo, alice, headers of alice's and bob's tokens): alice/site, a public
    static Space, on an in-process Hub with Spaces."""
    spaces = Path(tempfile.mkdtemp(prefix="cove-spaces-", dir="/tmp"))  # o+x, as Spaces need
    os.chmod(spaces, 0o711)
    app = create_app(Settings(data_dir=tmp_path / "data", spaces_dir=spaces, serving=False))
    hub = app.state.hub
    admin.create_account(hub, "alice", "user")
    admin.create_account(hub, "bob", "user")
    tokens = {who: {"authorization": f"Bearer {admin.create_token(hub, who, 'write', 't')}"}
              for who in ("alice", "bob")}
    alice = hub.principal_for_token(tokens["alice"]["authorization"].split()[1])
    with TestClient(app) as client:
        repo = hub.create_repo("space", "alice", "site", alice, private=False, sdk="static")
        hub.commit(repo, "main", [("README.md", b"---\nsdk: static\n---\n"),
                                  ("index.html", INDEX)], [], "site", alice, None)
        yield client, hub, repo, alice, tokens
    shutil.rmtree(spaces, ignore_errors=True)


def test_visibility_move_and_delete_show_at_once(site):
    client, hub, repo, alice, tokens = site
    assert client.get("/spaces/alice/site/app/").content == INDEX
    hub.set_private(repo, True)
    assert client.get("/spaces/alice/site/app/").status_code == 404
    assert client.get("/spaces/alice/site/app/", headers=tokens["bob"]).status_code == 404
    assert client.get("/spaces/alice/site/app/", headers=tokens["alice"]).content == INDEX
    hub.set_private(repo, False)
    assert client.get("/spaces/alice/site/app/").content == INDEX
    hub.move_repo(repo, "alice/moved", alice)
    assert client.get("/spaces/alice/site/app/").status_code == 404
    assert client.get("/spaces/alice/moved/app/").content == INDEX
    hub.delete_repo(repo)
    missing = client.get("/spaces/alice/moved/app/")
    assert missing.status_code == 404 and missing.headers["x-error-code"] == "RepoNotFound"


def test_proxy_answers_of_its_own(site):
    client, hub, repo, alice, tokens = site
    bare = client.get("/spaces/alice/site/app?x=1", follow_redirects=False)
    assert bare.status_code == 307 and bare.headers["location"] == "/spaces/alice/site/app/?x=1"
    refused = client.request("PROPFIND", "/spaces/alice/site/app/")
    assert refused.status_code == 405 and refused.headers["x-error-code"] == "MethodNotAllowed"
    # A bad token is refused for a private Space, as anywhere on the Hub.
    hub.set_private(repo, True)
    bad = client.get("/spaces/alice/site/app/", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    # Paths beside the app's prefix are the Hub's own.
    assert client.get("/spaces/alice/site/application").status_code == 404
    assert client.get("/api/spaces/alice/site/runtime", headers=tokens["alice"]).json()[
        "stage"] == "RUNNING"
