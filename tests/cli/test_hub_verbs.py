"""The hub verbs of `cove` (login, whoami, repo, upload, download, ls), run as subprocesses
against a live `cove serve`, as a user would type them."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import seeded_server
from tests.server.live import LiveServer


class Hub:
    def __init__(self, server: LiveServer, accounts) -> None:
        self.server, self.url, self.accounts = server, server.url, accounts
        self.secrets = [accounts.alice_write, accounts.alice_read, accounts.bob_write]

    def run(self, *args, home: Path, token: str | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        """`cove ARGS` with its own COVE_HOME; no token from this process's environment."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HF_", "COVE_", "HUGGING_FACE_"))}
        env.update(COVE_ENDPOINT=self.url, COVE_HOME=str(home), HF_HUB_DISABLE_PROGRESS_BARS="1")
        if token:
            env["COVE_TOKEN"] = token
        r = subprocess.run([sys.executable, "-m", "cove", *map(str, args)], env=env, input=input,
                           capture_output=True, text=True, timeout=60)
        for secret in self.secrets:  # no verb ever shows a token
            assert secret not in r.stdout and secret not in r.stderr, args
        assert "Traceback" not in r.stderr, r.stderr
        return r


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    live = seeded_server(tmp_path_factory.mktemp("hub"))
    yield Hub(live, live.accounts)
    live.stop()


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def failed(r: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 1 with one line `cove: ...` on stderr naming what went wrong."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cove: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def the_path(r: subprocess.CompletedProcess) -> Path:
    """download prints the local path and nothing else on stdout."""
    lines = ok(r).splitlines()
    assert len(lines) == 1, r.stdout
    return Path(lines[0])


def table(out: str) -> list[dict[str, str]]:
    """Rows of an aligned table, cut at the header's column positions (so misalignment shows)."""
    header, *rows = out.splitlines()
    names = re.findall(r"\S+(?: \S+)*", header)  # "LAST MODIFIED" is one column
    starts = [header.index(n) for n in names] + [None]
    return [{n: row[starts[i]:starts[i + 1]].strip() for i, n in enumerate(names)}
            for row in rows]


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".cache" not in p.relative_to(folder).parts}


def test_login_whoami_logout(hub, tmp_path):
    home, accounts = tmp_path / "home", hub.accounts
    failed(hub.run("whoami", home=home), "not logged in", "cove login")

    out = ok(hub.run("login", home=home, input=accounts.alice_write + "\n"))  # piped on stdin
    assert "Logged in as alice" in out
    token_file = home / "token"
    assert token_file.read_text() == accounts.alice_write
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert ok(hub.run("whoami", home=home)).splitlines() == ["alice", "orgs: acme"]

    assert "Logged in as bob" in ok(hub.run("login", "--token", accounts.bob_write, home=home))
    assert token_file.read_text() == accounts.bob_write
    assert ok(hub.run("whoami", home=home)).splitlines() == ["bob"]

    failed(hub.run("login", "--token", "hf_not_a_real_token", home=home), "401")
    assert token_file.read_text() == accounts.bob_write  # a refused token is never saved
    failed(hub.run("login", home=home, input=""), "no token")

    assert "Logged out" in ok(hub.run("logout", home=home))
    assert not token_file.exists()
    failed(hub.run("whoami", home=home), "not logged in")


def test_repo_create_ls_delete(hub, tmp_path):
    home, alice, url = tmp_path, hub.accounts.alice_write, hub.url
    assert ok(hub.run("repo", "create", "cli-public", home=home, token=alice)).strip() \
        == f"{url}/alice/cli-public"
    assert ok(hub.run("repo", "create", "alice/cli-private", "--private", home=home,
                      token=alice)).strip() == f"{url}/alice/cli-private"
    assert ok(hub.run("repo", "create", "cli-data", "--repo-type", "dataset", home=home,
                      token=alice)).strip() == f"{url}/datasets/alice/cli-data"
    failed(hub.run("repo", "create", "cli-public", home=home, token=alice), "409")
    assert ok(hub.run("repo", "create", "cli-public", "--exist-ok", home=home,
                      token=alice)).strip() == f"{url}/alice/cli-public"

    mine = {r["ID"]: r for r in table(ok(hub.run("repo", "ls", home=home, token=alice)))}
    assert mine["alice/cli-public"]["VISIBILITY"] == "public"
    assert mine["alice/cli-private"]["VISIBILITY"] == "private"
    assert mine["alice/cli-public"]["DOWNLOADS"] == "0" and "alice/cli-data" not in mine
    datasets = table(ok(hub.run("repo", "ls", "--repo-type", "dataset", home=home, token=alice)))
    assert [r["ID"] for r in datasets] == ["alice/cli-data"]
    seen_by_bob = table(ok(hub.run("repo", "ls", "--author", "alice", home=home,
                                   token=hub.accounts.bob_write)))
    assert {r["ID"] for r in seen_by_bob} >= {"alice/cli-public"}
    assert "alice/cli-private" not in {r["ID"] for r in seen_by_bob}

    ok(hub.run("repo", "delete", "alice/cli-private", home=home, token=alice))
    mine = table(ok(hub.run("repo", "ls", home=home, token=alice)))
    assert "alice/cli-private" not in {r["ID"] for r in mine}
    failed(hub.run("repo", "delete", "alice/cli-private", home=home, token=alice),
           "Repository Not Found")
    ok(hub.run("repo", "delete", "alice/cli-private", "--missing-ok", home=home, token=alice))


def test_upload_then_download(hub, tmp_path):
    home, alice = tmp_path / "home", hub.accounts.alice_write
    src = tmp_path / "tiny"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"hidden_size": 8}')
    (src / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    (src / "sub" / "notes.txt").write_text("notes")
    (src / "weights.bin").write_bytes(os.urandom(300_000))  # binary: an LFS file
    commit = re.compile(rf"^{re.escape(hub.url)}/alice/cli-up/commit/([0-9a-f]{{40}})$")

    # The repository does not exist yet: upload creates it (private here), like `hf upload`.
    first = commit.match(ok(hub.run("upload", "alice/cli-up", src, "--private",
                                    "--commit-message", "first", home=home, token=alice)).strip())
    assert first
    v2 = tmp_path / "config-v2.json"
    v2.write_text('{"hidden_size": 16}')
    second = commit.match(ok(hub.run("upload", "alice/cli-up", v2, "config.json", home=home,
                                     token=alice)).strip())
    assert second and second[1] != first[1]

    one = the_path(hub.run("download", "alice/cli-up", "config.json", home=home, token=alice))
    assert one.is_relative_to(home / "hub") and one.read_bytes() == v2.read_bytes()
    old = the_path(hub.run("download", "alice/cli-up", "config.json", "--revision", first[1],
                           home=home, token=alice))
    assert old.read_bytes() == (src / "config.json").read_bytes()

    snapshot = the_path(hub.run("download", "alice/cli-up", home=home, token=alice))
    got = files_under(snapshot)
    assert got["config.json"] == v2.read_bytes()
    for name, content in files_under(src).items():
        if name != "config.json":
            assert got[name] == content, name

    local = tmp_path / "local"
    assert the_path(hub.run("download", "alice/cli-up", "--include", "*.json", "sub/*",
                            "--local-dir", local, home=home, token=alice)) == local
    assert files_under(local) == {"config.json": v2.read_bytes(), "sub/notes.txt": b"notes"}
    excluded = the_path(hub.run("download", "alice/cli-up", "--exclude", "*.bin", "README.md",
                                "--cache-dir", tmp_path / "other-cache", home=home, token=alice))
    names = set(files_under(excluded))
    assert {"config.json", "sub/notes.txt"} <= names and not names & {"weights.bin", "README.md"}

    # Private: without a token it is not there.
    failed(hub.run("download", "alice/cli-up", "config.json", home=tmp_path / "anon"),
           "Repository Not Found")

    # A folder to the root ("." as hf takes it), deleting remote *.txt in the same commit.
    later = tmp_path / "later"
    later.mkdir()
    (later / "new.txt").write_text("new")
    assert commit.match(ok(hub.run("upload", "alice/cli-up", later, ".", "--delete", "*.txt",
                                   home=home, token=alice)).strip())
    from cove.hub import HubApi

    files = HubApi(endpoint=hub.url, token=alice).list_repo_files("alice/cli-up")
    assert "new.txt" in files and "sub/notes.txt" not in files and "config.json" in files


def test_ls(hub, tmp_path):
    from cove.hub import HubApi

    for owner, name, card in [
        ("alice", "cli-ls-alpha", "pipeline_tag: text-classification\ntags: [cli-ls-tag]"),
        ("alice", "cli-ls-beta", "pipeline_tag: translation"),
        ("bob", "cli-ls-gamma", "tags: [cli-ls-tag]"),
    ]:
        api = HubApi(endpoint=hub.url, token=getattr(hub.accounts, f"{owner}_write"))
        api.create_repo(f"{owner}/{name}")
        api.upload_file(path_or_fileobj=f"---\n{card}\n---\n".encode(), path_in_repo="README.md",
                        repo_id=f"{owner}/{name}")
        api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json",
                        repo_id=f"{owner}/{name}")
    HubApi(endpoint=hub.url, token=hub.accounts.alice_write).create_repo(
        "alice/cli-ls-set", repo_type="dataset")
    home = tmp_path
    ok(hub.run("download", "alice/cli-ls-beta", "config.json", home=home))  # one download

    rows = table(ok(hub.run("ls", "--search", "cli-ls", "--sort", "downloads", home=home)))
    assert {r["ID"] for r in rows} == {"alice/cli-ls-alpha", "alice/cli-ls-beta",
                                       "bob/cli-ls-gamma"}
    assert rows[0]["ID"] == "alice/cli-ls-beta" and rows[0]["DOWNLOADS"] == "1"
    assert rows[0]["TASK"] == "translation" and rows[0]["LIKES"] == "0"
    by_id = {r["ID"]: r for r in rows}
    assert by_id["alice/cli-ls-alpha"]["TASK"] == "text-classification"
    assert by_id["bob/cli-ls-gamma"]["DOWNLOADS"] == "0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", by_id["bob/cli-ls-gamma"]["LAST MODIFIED"])

    rows = table(ok(hub.run("ls", "models", "--search", "cli-ls", "--author", "bob",
                            home=home)))
    assert [r["ID"] for r in rows] == ["bob/cli-ls-gamma"]
    rows = table(ok(hub.run("ls", "--filter", "cli-ls-tag", home=home)))
    assert [r["ID"] for r in rows] == ["alice/cli-ls-alpha", "bob/cli-ls-gamma"]
    rows = table(ok(hub.run("ls", "--search", "cli-ls", "--sort", "downloads", "--limit", "1",
                            home=home)))
    assert [r["ID"] for r in rows] == ["alice/cli-ls-beta"]
    rows = table(ok(hub.run("ls", "datasets", "--search", "cli-ls", home=home)))
    assert [r["ID"] for r in rows] == ["alice/cli-ls-set"]
    r = hub.run("ls", "--search", "no-such-thing-anywhere", home=home)
    assert ok(r) == "" and "no models" in r.stderr


def test_errors_are_one_line(hub, tmp_path):
    out = hub.run("download", "alice/does-not-exist", home=tmp_path)
    failed(out, "Repository Not Found", "alice/does-not-exist")
    assert out.stdout == ""
    failed(hub.run("ls", "--endpoint", "http://127.0.0.1:9", home=tmp_path), "cannot reach")
