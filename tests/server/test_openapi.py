"""The OpenAPI document and /docs, and schemathesis against the live server it describes.

The server of this module is its own (conftest's module-scoped `server`): the fuzzing creates,
moves and deletes whatever its generated requests happen to name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import httpx
import pytest
import schemathesis
import schemathesis.engine
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

SEED = 20240611
EXAMPLES = 20  # per operation and phase: bounded, as this runs in CI every time


def auth(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> bytes:
    """The commit body: the document describes it as the array of its lines."""
    lines = value if isinstance(value, list) else [value]
    return "\n".join(json.dumps(line) for line in lines).encode()


@schemathesis.check
def error_has_code(ctx, response, case) -> None:
    """Every error names its code: the client maps errors by X-Error-Code, not by status."""
    if response.status_code >= 400 and not response.headers.get("x-error-code"):
        raise AssertionError(f"{response.status_code} without X-Error-Code")


@schemathesis.check
def no_server_error(ctx, response, case) -> None:
    """No 5xx but the documented 501 of a feature not built yet (pull requests)."""
    code = response.headers.get("x-error-code", [""])[0]  # header values come as lists
    if response.status_code >= 500 and code != "NotImplemented":
        raise AssertionError(f"Server error {response.status_code} ({code or 'no code'})")


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def seeded(server, http) -> dict:
    """Repositories with files, an LFS object, a branch and a tag for the fuzzing to find."""
    token = server.accounts.alice_write
    for name, kind, private in (("fuzz", None, False), ("secret", None, True),
                                ("fuzz", "dataset", False)):
        r = http.post("/api/repos/create", json={"name": name, "type": kind, "private": private},
                      headers=auth(token))
        assert r.status_code == 200, r.text
    data = b"lfs" * 100
    oid = hashlib.sha256(data).hexdigest()
    batch = http.post("/alice/fuzz.git/info/lfs/objects/batch", headers=auth(token), json={
        "operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).json()
    assert http.put(batch["objects"][0]["actions"]["upload"]["href"], content=data).status_code == 200
    lines = [
        {"key": "header", "value": {"summary": "seed"}},
        {"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                  "content": base64.b64encode(b"---\nlicense: mit\n---\n").decode()}},
        {"key": "file", "value": {"path": "dir/a.txt", "content": base64.b64encode(b"0123456789").decode()}},
        {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(data)}},
    ]
    r = http.post("/api/models/alice/fuzz/commit/main", headers=auth(token),
                  content="\n".join(json.dumps(x) for x in lines))
    assert r.status_code == 200, r.text
    assert http.post("/api/models/alice/fuzz/branch/dev", headers=auth(token)).status_code == 200
    assert http.post("/api/models/alice/fuzz/tag/main", json={"tag": "v1"},
                     headers=auth(token)).status_code == 200
    return {"commit": r.json()["commitOid"], "oid": oid}


def test_document_is_valid_openapi(http):
    r = http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    schemathesis.openapi.from_dict(doc).validate()
    ops = {(m.upper(), p): o for p, item in doc["paths"].items() for m, o in item.items()}
    assert len({o["operationId"] for o in ops.values()}) == len(ops)
    for (method, path), op in ops.items():
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert "X-Error-Code" in response["headers"], (method, path, status)
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/HubErrorBody"}
        # Path parameters are declared with the path (custom convertors included).
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
    repo_info = ops[("GET", "/api/{rtype}/{repo_id}")]
    params = {p["name"]: p for p in repo_info["parameters"]}
    assert params["rtype"]["schema"]["enum"] == ["models", "datasets", "spaces"]
    assert params["repo_id"]["schema"]["pattern"]
    assert params["blobs"]["in"] == "query"
    listing = {p["name"] for p in ops[("GET", "/api/{rtype}")]["parameters"]}
    assert {"search", "author", "filter", "sort", "limit", "cursor", "full", "expand"} <= listing
    commit = ops[("POST", "/api/{rtype}/{repo_id}/commit/{revision}")]
    assert "application/x-ndjson" in commit["requestBody"]["content"]
    assert {"412", "422"} <= set(commit["responses"])
    batch = ops[("POST", "/{repo_id}.git/info/lfs/objects/batch")]
    assert "application/vnd.git-lfs+json" in batch["requestBody"]["content"]
    resolve = ops[("GET", "/{repo_id}/resolve/{revision}/{path}")]
    assert {"Range"} <= {p["name"] for p in resolve["parameters"] if p["in"] == "header"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # 400s, not FastAPI's 422
    assert doc["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert {} in doc["security"]  # the token is optional
    assert ops[("PUT", "/api/lfs/objects/{oid}")]["security"] == []  # signed URLs


def test_docs_page_works_offline(http):
    r = http.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
    urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", r.text)
    assert urls and all(u.startswith("/") for u in urls), urls  # nothing from another host
    assert "validator.swagger.io" not in r.text
    for url in urls:
        asset = http.get(url)
        assert asset.status_code == 200, url
        assert asset.content


def test_old_api_docs_paths_are_gone_and_repo_named_docs_works(http, server, seeded):
    for old in ("/api/openapi.json", "/api/docs"):
        r = http.get(old)
        assert r.status_code == 404 and r.headers["x-error-code"]
    token = server.accounts.alice_write
    r = http.post("/api/repos/create", json={"name": "docs"}, headers=auth(token))
    assert r.status_code == 200, r.text
    assert http.get("/api/models/alice/docs").json()["id"] == "alice/docs"
    assert http.head("/alice/docs/resolve/main/.gitattributes").status_code == 200
    # A bare `docs` id is a repository id like `gpt2`, never the docs page.
    r = http.get("/docs/resolve/main/config.json")
    assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"


# Regressions: what fuzzing found, each a 500 or a dropped connection before.
BAD_INPUT = [
    ("POST", "/api/repos/create", b'{"name": ', "application/json"),  # cut JSON
    ("POST", "/api/repos/create", b"[1]", "application/json"),  # not an object
    ("POST", "/api/repos/create", b'{"name": "\xff"}', "application/json"),  # not UTF-8
    ("POST", "/api/models/alice/fuzz/tag/main", b'{"tag": "t", "message": "\\ud800"}',
     "application/json"),  # a lone surrogate, which no git object or SQL row can hold
    ("DELETE", "/api/repos/delete", b"", None),  # no body at all
    ("POST", "/api/repos/move", b'{"fromRepo": "alice/fuzz", "toRepo": "x"}', "application/json"),
    ("POST", "/api/models/alice/fuzz/preupload/main", b'{"files": [{"path": "a", "size": "x"}]}',
     "application/json"),
    ("POST", "/alice/fuzz.git/info/lfs/objects/batch", b'{"operation": "upload", "objects": 1}',
     "application/vnd.git-lfs+json"),
    ("POST", "/api/models/alice/fuzz/commit/main", b'{"key": "file", "value": 1}', None),
    ("POST", "/api/models/alice/fuzz/commit/main", b'{"key": "header", "value": {"summary": 1}}',
     None),
    ("POST", "/api/models/alice/fuzz/paths-info/main", b"[1]", "application/json"),
    ("GET", "/api/models?cursor=" + "9" * 30, b"", None),  # past SQL's BIGINT
    ("GET", f"/api/models/alice/fuzz/tree/main?cursor={2**63 - 2}", b"", None),  # past islice's
    ("GET", "/api/models/alice/fuzz/tree/main?limit=-1", b"", None),
    ("GET", "/api/models/alice/fuzz/commits/main?p=-1", b"", None),
    ("GET", "/alice/fuzz/resolve/main/a%0Ab.txt", b"", None),  # a newline: was a 404 NotFound
    ("GET", "/api/models?search=%00", b"", None),
]


@pytest.mark.parametrize(("method", "url", "body", "ctype"), BAD_INPUT)
def test_bad_input_is_a_clear_400(http, server, seeded, method, url, body, ctype):
    headers = {**auth(server.accounts.alice_write), **({"content-type": ctype} if ctype else {})}
    r = http.request(method, url, content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["x-error-code"] in ("BadRequest", "InvalidPath")
    assert r.json()["error"] == r.headers["x-error-message"]


def test_pagination_link_of_an_encoded_url(http, seeded):
    # The routed path holds NUL for each %2F: a Link built from it made the server drop
    # the connection instead of answering.
    r = http.get("/api/models/alice%2Ffuzz/commits/refs%2Fheads%2Fdev?limit=1")
    assert r.status_code == 200 and len(r.json()) == 1
    assert "/api/models/alice%2Ffuzz/commits/refs%2Fheads%2Fdev?limit=1&p=1>" in r.headers["link"]
    r = http.get("/api/models/alice%2Ffuzz/tree/refs%2Fheads%2Fdev?limit=1")
    assert r.status_code == 200
    assert "/api/models/alice%2Ffuzz/tree/refs%2Fheads%2Fdev?limit=1&cursor=1>" in r.headers["link"]


def test_signature_with_non_ascii_is_refused(http, seeded):
    url = f"/api/lfs/objects/{seeded['oid']}?size=1&expires=1&sig=%C2%98"
    r = http.put(url, content=b"x")  # compare_digest raised TypeError on it: a 500
    assert r.status_code == 403 and r.headers["x-error-code"] == "InvalidSignature"


def test_commit_path_both_file_and_folder_conflicts(http, server, seeded):
    def commit(path: str):
        lines = [{"key": "header", "value": {"summary": "s"}},
                 {"key": "file", "value": {"path": path, "content": ""}}]
        return http.post("/api/models/alice/fuzz/commit/dev", headers=auth(server.accounts.alice_write),
                         content="\n".join(json.dumps(x) for x in lines))

    under_file = commit("README.md/x")  # failed in dulwich (an assert): a 500
    assert under_file.status_code == 409 and "README.md is a file" in under_file.json()["error"]
    over_folder = commit("dir")  # silently dropped dir/a.txt
    assert over_folder.status_code == 409 and "is a folder" in over_folder.json()["error"]
    assert http.head("/alice/fuzz/resolve/dev/dir/a.txt").status_code == 200


def test_error_headers_stay_valid(http, server):
    # Messages quote user input: a CR/LF in a header made the server drop the answer, and the
    # LFS error body was JSON built by hand (broken by a quote).
    r = http.post("/api/lfs/verify", json={"oid": 'a"b\r\nc', "size": 1},
                  headers=auth(server.accounts.alice_write))
    assert r.status_code == 404 and r.headers["x-error-code"] == "LfsError"
    assert "\r" not in r.headers["x-error-message"]
    assert r.json()["error"] == r.json()["message"] == 'Object a"b\r\nc was not uploaded.'
    # A 405 keeps the methods it allows.
    r = http.request("PATCH", "/api/models/alice/fuzz")
    assert r.status_code == 405 and r.headers["x-error-code"] == "MethodNotAllowed"
    assert r.headers["allow"] == "GET"


def _fuzz(server, seeded: dict, headers: dict[str, str]) -> list[str]:
    """Run schemathesis' examples, coverage and fuzzing phases; the failures, described."""
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "headers": headers,
        "generation": {"max-examples": EXAMPLES, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            # Replaced by `no_server_error`, which lets the documented 501 (create_pr) through.
            "not_a_server_error": {"enabled": False},
            # The path and name rules (no `..`, no `.git`, 96 characters) are checked by the
            # server, not spelled out as patterns: such requests get a 400 that the other
            # checks still see, headers included.
            "positive_data_acceptance": {"enabled": False},
            "negative_data_rejection": {"enabled": False},
            # Starlette's 405 names the methods of the first route on a path only.
            "allow_header_conformance": {"enabled": False},
        },
        # Known names half of the time, so that requests reach past "not found".
        "dictionaries": {
            "repos": {"values": ["alice/fuzz", "alice/secret", "fuzz", "bob/none"]},
            "revisions": {"values": ["main", "dev", "v1", seeded["commit"], "refs/heads/dev"]},
            "paths": {"values": ["README.md", "dir/a.txt", "w.bin", "dir", "missing.txt"]},
            "oids": {"values": [seeded["oid"]]},
        },
        "parameters": {
            "path.repo_id": {"dictionary": "repos", "probability": 0.5},
            "path.revision": {"dictionary": "revisions", "probability": 0.5},
            "path.path": {"dictionary": "paths", "probability": 0.5},
            "path.oid": {"dictionary": "oids", "probability": 0.5},
        },
    })
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    failures = []
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        failures.append(f"{event.recorder.label}: {failure.title}: "
                                        f"{failure.message}\n{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):  # e.g. the server dropped a connection
            failures.append(f"{event.label}: {event.value!r}\n{event.info.code_sample}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return failures


def test_fuzz_anonymous(server, seeded):
    failures = _fuzz(server, seeded, {})
    assert not failures, "\n\n".join(failures)


def test_fuzz_with_write_token(server, seeded):
    failures = _fuzz(server, seeded, auth(server.accounts.alice_write))
    assert not failures, "\n\n".join(failures)
