"""The wire protocol checked with a plain HTTP client: headers, errors, safety, LFS rules."""

from __future__ import annotations

import base64
import hashlib
import json

import httpx
import pytest


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def auth(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def commit(http, token, repo, ops, revision="main", summary="test"):
    lines = [{"key": "header", "value": {"summary": summary}}, *ops]
    return http.post(
        f"/api/models/{repo}/commit/{revision}",
        content="\n".join(json.dumps(x) for x in lines),
        headers={**auth(token), "content-type": "application/x-ndjson"},
    )


def add(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(),
                                     "encoding": "base64"}}


@pytest.fixture(scope="module")
def repo(server, http):
    token = server.accounts.alice_write
    r = http.post("/api/repos/create", json={"name": "proto", "organization": None},
                  headers=auth(token))
    assert r.status_code == 200, r.text
    r = commit(http, token, "alice/proto", [add("dir/a.txt", b"0123456789"), add("b.json", b"{}")])
    assert r.status_code == 200, r.text
    return "alice/proto"


def test_resolve_headers_and_ranges(http, repo):
    sha = http.get(f"/api/models/{repo}").json()["sha"]
    head = http.head(f"/{repo}/resolve/main/dir/a.txt", headers={"accept-encoding": "identity"})
    assert head.status_code == 200
    blob = hashlib.sha1(b"blob 10\x000123456789").hexdigest()
    assert head.headers["x-repo-commit"] == sha
    assert head.headers["etag"] == f'"{blob}"'
    assert head.headers["x-linked-size"] == "10"
    assert head.headers["content-length"] == "10"
    assert head.headers["accept-ranges"] == "bytes"
    assert "content-encoding" not in head.headers
    assert not [h for h in head.headers if "xet" in h.lower()]
    r = http.get(f"/{repo}/resolve/{sha}/dir/a.txt", headers={"range": "bytes=3-"})
    assert r.status_code == 206 and r.content == b"3456789"
    assert r.headers["content-range"] == "bytes 3-9/10"
    r = http.get(f"/{repo}/resolve/main/dir/a.txt", headers={"range": "bytes=2-4"})
    assert r.status_code == 206 and r.content == b"234"
    r = http.get(f"/{repo}/resolve/main/dir/a.txt", headers={"range": "bytes=50-"})
    assert r.status_code == 416 and r.headers["x-error-code"] == "RangeNotSatisfiable"


def test_encoded_revisions_and_tree(http, repo):
    r = http.get(f"/api/models/{repo}/revision/refs%2Fheads%2Fmain")
    assert r.status_code == 200 and r.json()["id"] == repo
    r = http.get(f"/api/models/{repo}/tree/main/dir")
    assert [e["path"] for e in r.json()] == ["dir/a.txt"]
    r = http.get(f"/api/models/{repo}/tree/main?recursive=True")
    entries = {e["path"]: e for e in r.json()}
    assert entries["dir"]["type"] == "directory" and entries["dir/a.txt"]["size"] == 10
    assert all("xetHash" not in e for e in entries.values())
    r = http.post(f"/api/models/{repo}/paths-info/main",
                  data={"paths": ["b.json", "missing"], "expand": "false"})
    assert [e["path"] for e in r.json()] == ["b.json"]


def test_every_error_has_hub_headers(http, repo, server):
    cases = [
        (http.get("/api/nope"), 404, "NotFound"),
        (http.get(f"/{repo}/resolve/main/missing.txt"), 404, "EntryNotFound"),
        (http.get(f"/{repo}/resolve/nobranch/b.json"), 404, "RevisionNotFound"),
        (http.get("/api/models/alice/does-not-exist"), 404, "RepoNotFound"),
        (http.get("/api/whoami-v2"), 401, "Unauthorized"),
        (http.get("/api/whoami-v2", headers=auth("hf_wrong")), 401, "Unauthorized"),
        (http.get("/api/models?sort=bogus"), 400, "BadRequest"),
    ]
    for r, status, code in cases:
        assert r.status_code == status, r.text
        assert r.headers["x-error-code"] == code
        assert r.headers["x-error-message"]
        assert "error" in r.json()
    missing = http.get(f"/{repo}/resolve/main/missing.txt")
    assert missing.headers["x-repo-commit"]  # lets the client cache the miss


@pytest.mark.parametrize("path", ["../escape.txt", "/abs.txt", ".git/config", "a/.git/x",
                                  "a//b"])
def test_unsafe_paths_refused(http, repo, server, path):
    r = commit(http, server.accounts.alice_write, repo, [add(path, b"x")])
    assert r.status_code == 400 and r.headers["x-error-code"] == "InvalidPath"


def test_read_token_cannot_write(http, repo, server):
    r = commit(http, server.accounts.alice_read, repo, [add("c.txt", b"x")])
    assert r.status_code == 403
    r = commit(http, server.accounts.bob_write, repo, [add("c.txt", b"x")])
    assert r.status_code == 403


def test_preupload_modes(http, repo, server):
    files = [
        {"path": "small.txt", "sample": base64.b64encode(b"hello").decode(), "size": 5},
        {"path": "w.safetensors", "sample": base64.b64encode(b"{}").decode(), "size": 2},
        {"path": "big.txt", "sample": base64.b64encode(b"a").decode(), "size": 11 * 2**20},
        {"path": "bin.dat", "sample": base64.b64encode(b"\x00\x01").decode(), "size": 100},
        {"path": "empty.bin", "sample": "", "size": 0},
        {"path": "b.json", "sample": base64.b64encode(b"{}").decode(), "size": 2},
    ]
    r = http.post(f"/api/models/{repo}/preupload/main", json={"files": files},
                  headers=auth(server.accounts.alice_write))
    modes = {f["path"]: f for f in r.json()["files"]}
    assert modes["small.txt"]["uploadMode"] == "regular"
    assert modes["w.safetensors"]["uploadMode"] == "lfs"
    assert modes["big.txt"]["uploadMode"] == "lfs"
    assert modes["bin.dat"]["uploadMode"] == "lfs"
    assert modes["empty.bin"]["uploadMode"] == "regular"
    assert all(f["shouldIgnore"] is False for f in modes.values())
    assert modes["b.json"]["oid"] == hashlib.sha1(b"blob 2\x00{}").hexdigest()


def test_lfs_upload_verified_and_signed(http, repo, server):
    token = server.accounts.alice_write
    data = b"lfs-bytes" * 1000
    oid = hashlib.sha256(data).hexdigest()
    batch = http.post(
        f"/{repo}.git/info/lfs/objects/batch",
        json={"operation": "upload", "transfers": ["basic", "xet"], "hash_algo": "sha256",
              "objects": [{"oid": oid, "size": len(data)}]},
        headers={**auth(token), "content-type": "application/vnd.git-lfs+json"},
    ).json()
    assert batch["transfer"] == "basic"
    href = batch["objects"][0]["actions"]["upload"]["href"]
    # Tampered URL and wrong bytes are refused, and nothing becomes visible.
    assert httpx.put(href.replace("sig=", "sig=0"), content=data).status_code == 403
    assert httpx.put(href, content=b"x" * len(data)).status_code == 400
    r = commit(http, token, repo, [{"key": "lfsFile", "value": {
        "path": "w.bin", "algo": "sha256", "oid": oid, "size": len(data)}}])
    assert r.status_code == 422 and r.headers["x-error-code"] == "LfsObjectMissing"
    assert httpx.put(href, content=data).status_code == 200
    verify = batch["objects"][0]["actions"]["verify"]
    assert http.post(verify["href"], json={"oid": oid, "size": len(data)},
                     headers=auth(token)).status_code == 200
    r = commit(http, token, repo, [{"key": "lfsFile", "value": {
        "path": "w.bin", "algo": "sha256", "oid": oid, "size": len(data)}}])
    assert r.status_code == 200, r.text
    got = http.get(f"/{repo}/resolve/main/w.bin")
    assert got.content == data and got.headers["etag"] == f'"{oid}"'
    # A second batch for a stored object asks for nothing.
    again = http.post(f"/{repo}.git/info/lfs/objects/batch",
                      json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
                      headers=auth(token)).json()
    assert "actions" not in again["objects"][0]


def test_stale_parent_commit_conflicts(http, repo, server):
    token = server.accounts.alice_write
    old = http.get(f"/api/models/{repo}").json()["sha"]
    assert commit(http, token, repo, [add("p1.txt", b"1")]).status_code == 200
    lines = [{"key": "header", "value": {"summary": "stale", "parentCommit": old}}, add("p2.txt", b"2")]
    r = http.post(f"/api/models/{repo}/commit/main",
                  content="\n".join(json.dumps(x) for x in lines), headers=auth(token))
    assert r.status_code == 412 and "stale" in r.headers["x-error-message"]


def test_validate_yaml(http):
    ok = http.post("/api/validate-yaml", json={"content": "---\nlicense: mit\n---\n", "repoType": "model"})
    assert ok.json() == {"errors": [], "warnings": []}
    bad = http.post("/api/validate-yaml", json={"content": "---\na: [\n---\n", "repoType": "model"})
    assert bad.json()["errors"]
