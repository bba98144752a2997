"""What the CAS refuses: forged, expired or out-of-scope tokens, corrupt xorbs, shards that
do not hold up; and a SIGKILL in the middle of a Xet upload leaves nothing visible."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download

from cove.server.xet import tokens
from cove.server.xet.hashing import (
    chunk_hash,
    file_hash,
    hash_to_str,
    merkle_root,
    str_to_hash,
    verification_hash,
)
from cove.server.xet.shard import CasInfo, FileInfo, Term, build_shard
from cove.server.xet.xorb import LZ4, build_xorb
from tests.server.conftest import seed_accounts, seeded_server
from tests.server.live import LiveServer
from tests.xet.helpers import CountingProxy, cas_token

pytestmark = pytest.mark.timeout(300)
MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = seeded_server(tmp_path_factory.mktemp("xet-safety"))
    api = HfApi(endpoint=live.url, token=live.accounts.alice_write)
    api.create_repo("alice/open")
    api.create_repo("alice/secret", private=True)
    yield live
    live.stop()


def bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def sample_xorb(seed: int) -> tuple[list[bytes], str, bytes]:
    rng = np.random.default_rng(seed)
    chunks = [rng.bytes(20_000), bytes(30_000), rng.bytes(9_000)]
    name = hash_to_str(merkle_root([(chunk_hash(c), len(c)) for c in chunks]))
    return chunks, name, build_xorb(chunks, LZ4)


def test_token_endpoints_follow_the_hub_rules(server):
    acc = server.accounts
    url = server.url
    assert httpx.get(f"{url}/api/models/alice/open/xet-write-token/main").status_code == 401
    for token, status in ((acc.alice_read, 403), (acc.bob_write, 403), (acc.alice_write, 200)):
        r = httpx.get(f"{url}/api/models/alice/open/xet-write-token/main", headers=bearer(token))
        assert r.status_code == status
    r = httpx.get(f"{url}/api/models/alice/secret/xet-read-token/main", headers=bearer(acc.bob_write))
    assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"
    r = httpx.get(f"{url}/api/models/alice/open/xet-read-token/None")  # anonymous, public
    body = r.json()
    assert r.status_code == 200 and body["casUrl"] == url
    assert r.headers["x-xet-access-token"] == body["accessToken"]
    assert int(r.headers["x-xet-token-expiration"]) == body["exp"] > time.time()


def test_forged_and_out_of_scope_tokens_refused(server):
    chunks, name, body = sample_xorb(1)
    write = cas_token(server.url, "alice/open", server.accounts.alice_write, "write")["accessToken"]
    read = cas_token(server.url, "alice/open", None)["accessToken"]
    repo_id, op, exp, sig = write.split(".")
    secret = (server.data / "secret.key").read_bytes()
    forged = {
        "bad signature": f"{repo_id}.{op}.{exp}.{'0' * 64}",
        "read turned write": f"{repo_id}.write.{exp}.{read.split('.')[3]}",
        "longer life": f"{repo_id}.{op}.{int(exp) + 9999}.{sig}",
        "expired": tokens.issue(secret, int(repo_id), "write", ttl=-5)[0],
        "garbage": "hf_cove_not_a_cas_token",
    }
    for what, token in forged.items():
        r = httpx.post(f"{server.url}/v1/xorbs/default/{name}", content=body, headers=bearer(token))
        assert r.status_code == 401, what
    assert httpx.post(f"{server.url}/v1/xorbs/default/{name}", content=body).status_code == 401
    r = httpx.post(f"{server.url}/v1/xorbs/default/{name}", content=body, headers=bearer(read))
    assert r.status_code == 403
    r = httpx.post(f"{server.url}/v1/shards", content=b"", headers=bearer(read))
    assert r.status_code == 403


def upload_file_via_cas(url: str, token: str, seed: int) -> tuple[str, bytes]:
    """Upload one xorb and a shard of one file by hand; the file's hash and bytes."""
    chunks, name, body = sample_xorb(seed)
    r = httpx.post(f"{url}/v1/xorbs/default/{name}", content=body, headers=bearer(token))
    assert r.status_code == 200 and r.json() == {"was_inserted": True}
    r = httpx.post(f"{url}/v1/xorbs/default/{name}", content=body, headers=bearer(token))
    assert r.json() == {"was_inserted": False}
    hashes = [(chunk_hash(c), len(c)) for c in chunks]
    data = b"".join(chunks)
    term = Term(str_to_hash(name), 0, 3, len(data), verification_hash(h for h, _ in hashes))
    sha = str_to_hash(hashlib.sha256(data).hexdigest())
    shard = build_shard([FileInfo(file_hash(hashes), [term], sha)], [])
    r = httpx.post(f"{url}/v1/shards", content=shard, headers=bearer(token))
    assert r.status_code == 200, r.text
    return hash_to_str(file_hash(hashes)), data


def test_reconstruction_scoped_to_the_tokens_repository(server):
    acc = server.accounts
    secret_write = cas_token(server.url, "alice/secret", acc.alice_write, "write")["accessToken"]
    name, data = upload_file_via_cas(server.url, secret_write, seed=2)
    own = cas_token(server.url, "alice/secret", acc.alice_read)["accessToken"]
    other = cas_token(server.url, "alice/open", None)["accessToken"]
    url = f"{server.url}/v1/reconstructions/{name}"
    assert httpx.get(url, headers=bearer(own)).status_code == 200
    r = httpx.get(url, headers=bearer(other))  # another repository's token
    assert r.status_code == 404
    assert httpx.get(url).status_code == 401
    assert httpx.get(f"{server.url}/v1/reconstructions/{'0' * 64}", headers=bearer(own)).status_code == 404
    assert httpx.get(f"{server.url}/v1/reconstructions/xyz", headers=bearer(own)).status_code == 400
    # A presigned xorb URL is good for its own bytes only.
    fetch = next(iter(httpx.get(url, headers=bearer(own)).json()["fetch_info"].values()))[0]
    lo, hi = fetch["url_range"]["start"], fetch["url_range"]["end"]
    assert httpx.get(fetch["url"], headers={"Range": f"bytes={lo}-{hi}"}).status_code == 206
    assert httpx.get(fetch["url"], headers={"Range": f"bytes={lo}-{hi + 1}"}).status_code == 416
    tampered = fetch["url"].replace(f"end={hi}", f"end={hi + 100}")
    assert httpx.get(tampered).status_code == 403


def test_corrupt_xorbs_and_bad_shards_refused(server):
    write = cas_token(server.url, "alice/open", server.accounts.alice_write, "write")["accessToken"]
    chunks, name, body = sample_xorb(3)
    corrupt = bytearray(build_xorb(chunks))
    corrupt[500] ^= 0xFF
    for what, (path_name, payload) in {
        "flipped byte": (name, bytes(corrupt)),
        "hash of another xorb": (sample_xorb(4)[1], body),
        "truncated": (name, body[:-1]),
    }.items():
        r = httpx.post(f"{server.url}/v1/xorbs/default/{path_name}", content=payload,
                       headers=bearer(write))
        assert r.status_code == 400, what
        assert r.headers["x-error-code"] == "InvalidXorb"
    # Nothing of them was kept.
    with sqlite3.connect(server.data / "cove.db") as db:
        stored = {row[0] for row in db.execute("select hash from xet_xorbs")}
    assert name not in stored and sample_xorb(4)[1] not in stored

    hashes = [(chunk_hash(c), len(c)) for c in chunks]
    data = b"".join(chunks)
    good_term = Term(str_to_hash(name), 0, 3, len(data), verification_hash(h for h, _ in hashes))
    sha = str_to_hash(hashlib.sha256(data).hexdigest())
    fhash = file_hash(hashes)
    shards = {
        "missing xorb": (FileInfo(fhash, [good_term], sha), "XorbNotFound"),
    }
    r = httpx.post(f"{server.url}/v1/shards", content=build_shard([shards["missing xorb"][0]], []),
                   headers=bearer(write))
    assert r.status_code == 400 and r.headers["x-error-code"] == "XorbNotFound"
    # Now with the xorb stored, each lie of a shard is caught.
    assert httpx.post(f"{server.url}/v1/xorbs/default/{name}", content=body,
                      headers=bearer(write)).status_code == 200
    xorb = str_to_hash(name)
    lies = {
        "verification": FileInfo(fhash, [Term(xorb, 0, 3, len(data), bytes(32))], sha),
        "size": FileInfo(fhash, [Term(xorb, 0, 3, len(data) + 1, good_term.verification)], sha),
        "range": FileInfo(fhash, [Term(xorb, 0, 4, len(data), good_term.verification)], sha),
        "file hash": FileInfo(bytes(32), [good_term], sha),
        "sha256": FileInfo(fhash, [good_term], bytes(32)),
    }
    for what, info in lies.items():
        r = httpx.post(f"{server.url}/v1/shards", content=build_shard([info], []),
                       headers=bearer(write))
        assert r.status_code == 400 and r.headers["x-error-code"] == "InvalidShard", what
    wrong_cas = CasInfo(xorb, [(bytes(32), 0, 20_000)], 20_000, 0)
    r = httpx.post(f"{server.url}/v1/shards", content=build_shard([], [wrong_cas]),
                   headers=bearer(write))
    assert r.status_code == 400
    assert httpx.post(f"{server.url}/v1/shards", content=b"\x00" * 100,
                      headers=bearer(write)).status_code == 400
    # The routes hf_xet tries first and falls back from must be 404s.
    assert httpx.post(f"{server.url}/v2/shards", content=b"", headers=bearer(write)).status_code == 404
    assert httpx.post(f"{server.url}/v1/xorb-grants/default/{name}",
                      headers=bearer(write)).status_code == 404


def test_sigkill_during_xet_upload_leaves_nothing_visible(tmp_path_factory):
    data = tmp_path_factory.mktemp("xet-crash")
    accounts = seed_accounts(data)
    live = LiveServer(data).start()
    port = live.port
    proxy = CountingProxy(port)
    big = np.random.default_rng(11).bytes(100 * MiB)
    path = tmp_path_factory.mktemp("big") / "model.bin"
    path.write_bytes(big)
    api = HfApi(endpoint=proxy.url, token=accounts.alice_write)
    api.create_repo("alice/crash")
    errors: list[BaseException] = []

    def upload():
        try:
            api.upload_file(path_or_fileobj=str(path), path_in_repo="model.bin", repo_id="alice/crash")
        except BaseException as e:  # the server dies under it
            errors.append(e)

    assert not constants.HF_HUB_DISABLE_XET
    start = proxy.sent
    thread = threading.Thread(target=upload)
    thread.start()
    deadline = time.monotonic() + 60
    while proxy.sent - start < 40 * MiB and time.monotonic() < deadline:  # inside a xorb
        time.sleep(0.005)
    live.kill()
    thread.join(120)
    assert errors, "the upload should have failed with the server killed"
    live = LiveServer(data, port=port).start()
    try:
        with sqlite3.connect(data / "cove.db") as db:
            assert db.execute("select count(*) from xet_files").fetchone()[0] == 0
            xorbs = db.execute("select object_oid, size from xet_xorbs").fetchall()
        for oid, size in xorbs:  # every xorb row has its whole object
            assert (data / "lfs" / oid[:2] / oid[2:4] / oid).stat().st_size == size
        assert list((data / "lfs" / "tmp").iterdir()) == []
        assert "model.bin" not in HfApi(endpoint=live.url).list_repo_files("alice/crash")
        # Doing it again works.
        HfApi(endpoint=live.url, token=accounts.alice_write).upload_file(
            path_or_fileobj=str(path), path_in_repo="model.bin", repo_id="alice/crash")
        cache = tmp_path_factory.mktemp("cache")
        got = hf_hub_download("alice/crash", "model.bin", endpoint=live.url, cache_dir=cache)
        assert hashlib.sha256(open(got, "rb").read()).digest() == hashlib.sha256(big).digest()
    finally:
        proxy.close()
        live.stop()
        shutil.rmtree(path.parent, ignore_errors=True)


def test_private_repository_through_xet(server, tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    path = tmp_path / "weights.bin"
    path.write_bytes(np.random.default_rng(12).bytes(3 * MiB))
    HfApi(endpoint=server.url, token=server.accounts.alice_write).upload_file(
        path_or_fileobj=str(path), path_in_repo="weights.bin", repo_id="alice/secret")
    head = httpx.head(f"{server.url}/alice/secret/resolve/main/weights.bin",
                      headers=bearer(server.accounts.alice_read))
    assert "x-xet-hash" in head.headers
    got = hf_hub_download("alice/secret", "weights.bin", endpoint=server.url,
                          token=server.accounts.alice_read, cache_dir=tmp_path / "c")
    assert open(got, "rb").read() == path.read_bytes()
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/secret", "weights.bin", endpoint=server.url,
                        token=server.accounts.bob_write, cache_dir=tmp_path / "b")
    # Bob's token for his own repository reads nothing of Alice's through CAS either.
    HfApi(endpoint=server.url, token=server.accounts.bob_write).create_repo("bob/mine")
    bobs = cas_token(server.url, "bob/mine", server.accounts.bob_write)["accessToken"]
    r = httpx.get(f"{server.url}/v1/reconstructions/{head.headers['x-xet-hash']}",
                  headers=bearer(bobs))
    assert r.status_code == 404
