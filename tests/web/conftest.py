"""A live server with content for the page tests, and headless Chromium driven by playwright.

Chromium is Debian's (/usr/bin/chromium, installed by `make test`); playwright never downloads
a browser here. Screenshots go to tests/web/artifacts/ (git-ignored).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.server.live import LiveServer, cove

CHROMIUM = os.environ.get("COVE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22"}

CARD = """---
pipeline_tag: text-classification
library_name: transformers
license: mit
language: [en]
tags: [tiny, testing]
datasets: [alice/tiny-data]
---
# Tiny model

A model for **tests**: see [its config](config.json).

![logo](logo.png)

| split | accuracy |
|-------|----------|
| test  | 0.91     |

```python
from cove import pipeline
pipe = pipeline(model="alice/tiny-model")
```

<script>window.__pwned = true</script>
<img src="x" onerror="window.__pwned = true">
[click](javascript:window.__pwned=true)
"""


def png(width: int = 8, height: int = 8) -> bytes:
    """A small solid PNG, made by hand (no imaging library in the test dependencies)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + b"\x30\x80\xd0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def safetensors_file() -> bytes:
    header = {"embed.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]},
              "head.bias": {"dtype": "F32", "shape": [2], "data_offsets": [32, 40]},
              "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(40)


def gguf_file(tmp: Path) -> bytes:
    """A GGUF file of two tensors, written by the `gguf` package."""
    import numpy as np
    from gguf import GGUFWriter

    path = tmp / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("tok_embd.weight", np.zeros((5, 3), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.zeros((3,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def parquet_file(rows: int) -> bytes:
    table = pa.table({"idx": list(range(rows)), "text": [f"row number {i}" for i in range(rows)]})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=64)  # several row groups: pages cross them
    return out.getvalue()


@dataclass
class Site:
    live: LiveServer
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.live.url


def _seed(data: Path) -> dict[str, str]:
    cove("admin", "user", "create", "alice", "--email", "alice@example.com",
         "--password", PASSWORDS["alice"], data=data)
    subprocess.run([sys.executable, "-m", "cove", "admin", "user", "create", "bob",
                    "--password-stdin", "--data", str(data)],
                   input=PASSWORDS["bob"] + "\n", text=True, check=True, capture_output=True)
    cove("admin", "org", "create", "acme", "--member", "alice", data=data)
    return {user: cove("admin", "token", "create", user, "--role", "write", "--name", "t",
                       data=data) for user in ("alice", "bob")}


def _push(url: str, token: str, tmp: Path) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=url, token=token)

    def add(path: str, content: bytes | str) -> CommitOperationAdd:
        data = content.encode() if isinstance(content, str) else content
        return CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)

    api.create_repo("alice/tiny-model")
    api.create_commit("alice/tiny-model", [
        add("README.md", CARD), add("config.json", '{"hidden_size": 2}\n'),
        add("model.safetensors", safetensors_file()), add("docs/notes.txt", "notes\n"),
        add("logo.png", png()), add("tiny.gguf", gguf_file(tmp)),
        add("evil.html", "<script>document.title = window.origin</script>"),
    ], commit_message="Add the model")
    api.create_commit("alice/tiny-model", [add("config.json", '{"hidden_size": 4}\n')],
                      commit_message="Widen the model")
    api.create_repo("alice/chatty-model")
    api.upload_file(path_or_fileobj=b"---\npipeline_tag: text-generation\n---\n# Chatty\n",
                    path_in_repo="README.md", repo_id="alice/chatty-model")
    api.create_repo("alice/secret-model", private=True)
    api.upload_file(path_or_fileobj=b"classified\n", path_in_repo="secret.txt",
                    repo_id="alice/secret-model")
    api.create_repo("acme/org-secret", private=True)  # alice's through her organisation
    api.create_repo("alice/tiny-data", repo_type="dataset")
    api.create_commit("alice/tiny-data", [
        add("README.md", "---\nlicense: mit\ntask_categories: [text-classification]\n---\n# Data\n"),
        add("data/train-00000-of-00001.parquet", parquet_file(250)),
        add("data/test.csv", "idx,text\n" + "".join(f"{i},test row {i}\n" for i in range(30))),
    ], repo_type="dataset", commit_message="Add the data")


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Site:
    data = tmp_path_factory.mktemp("web-hub")
    tokens = _seed(data)
    live = LiveServer(data).start()
    try:
        _push(live.url, tokens["alice"], data)
        yield Site(live, tokens)
    finally:
        live.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The screenshots' folder (kept, not emptied: the suite's workers share it and each
    screenshot is overwritten by name)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# One browser per test file, not per session: while sync_playwright runs, its event loop is
# the process's running loop, and a later file's asyncio.run() on the same worker would fail.
@pytest.fixture(scope="module")
def browser(artifacts):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site):
    """A fresh, signed-out browser tab on the site."""
    context = browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    yield tab
    context.close()


def sign_in(page, user: str) -> None:
    page.goto("/login")
    page.get_by_label("Username or email").fill(user)
    page.get_by_label("Password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
