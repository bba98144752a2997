"""The web pages' server time with 10,000 repositories: listing, model page, files, viewer.

One `cove serve`-equivalent process (this script with `--serve`: `create_app` on a temp data
folder, serving on, no demo, under uvicorn as `cove serve` runs it) wrapped in a thin ASGI
timer, which adds `Server-Timing: app;dur=<ms>` to each answer: from the request reaching the
application (after uvicorn parsed it) to its whole body being produced, as the server sees it.
The client (http.client, one keep-alive connection over loopback) reads the header; its own
round trip is printed beside it.

The database holds 10,000 model rows seeded straight into SQL (bench/hub.py's
`seed_repositories`: pipeline tags, libraries, languages, licenses, downloads, 1 in 20
private), plus one real model (card, config, tokenizer, a 1 MiB safetensors, a folder) and
one dataset of 5,000 rows in parquet, made through the API. Pages measured:
/models (page 1, trending), /models filtered by task and sorted by downloads at page 20,
/models?search=, /models with a new filter combination each call (counts not cached), the
model page, its file tree, and the dataset viewer.
Targets (issue 16): a list page <= 30 ms, a model page <= 50 ms; the tree and the viewer are
held to the model page's target. COVE_BENCH_REPEATS (default 5) rounds of 40 calls each.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops  # noqa: E402
from _server import cove, free_port, stop, wait_http  # noqa: E402

N_REPOS = 10_000
REPEATS = max(5, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
CALLS = 40  # per page and round
USER = "bench"
MODEL = f"{USER}/page-model"
DATASET = f"{USER}/page-data"
DATASET_ROWS = 5_000

README = """---
license: apache-2.0
language: [en]
library_name: transformers
pipeline_tag: text-classification
tags: [bench, safetensors]
---
# A model for the page benchmark

Some **Markdown**: a table, a list and code, as real cards have.

| split | accuracy | f1 |
|-------|----------|----|
| test  | 0.91     | 0.9 |

- one
- two

```python
from cove import pipeline
pipe = pipeline(model="bench/page-model")
print(pipe("I like it"))
```
"""


# -- the server: cove's app under uvicorn, with a timer around it ------------------------
def serve(data: str, port: int) -> None:
    """Run Cove's application as `cove serve --no-demo` does, timed by `Timed`."""
    import uvicorn

    from cove.server import Settings, create_app

    app = create_app(Settings(data_dir=Path(data), database_url=""))
    uvicorn.run(Timed(app), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


class Timed:
    """ASGI middleware: holds the response start until the first body message, then adds
    `Server-Timing: app;dur=` (ms since the request reached the app) — the whole server time
    for the pages, which answer in one body message."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began = time.perf_counter()
        held = None

        async def timed_send(message):
            nonlocal held
            if message["type"] == "http.response.start":
                held = message
                return
            if held is not None:
                ms = (time.perf_counter() - began) * 1000
                held["headers"] = [*held.get("headers", []),
                                   (b"server-timing", f"app;dur={ms:.3f}".encode())]
                await send(held)
                held = None
            await send(message)

        await self.app(scope, receive, timed_send)


def start_server(data: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = data / "server.log"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(data), str(port)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/api/models?limit=1", proc, log)
    return proc, url


# -- content -------------------------------------------------------------------------------
def make_content(url: str, token: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=url, token=token)
    api.create_repo(MODEL)
    api.create_commit(MODEL, commit_message="files", operations=[
        CommitOperationAdd("README.md", README.encode()),
        CommitOperationAdd("config.json", json.dumps({"model_type": "bert"}).encode()),
        CommitOperationAdd("tokenizer.json", b"{}" * 1000),
        CommitOperationAdd("vocab.txt", b"[PAD]\n" * 1000),
        CommitOperationAdd("model.safetensors", os.urandom(1 << 20)),
        *[CommitOperationAdd(f"onnx/part-{i}.txt", f"{i}\n".encode()) for i in range(10)],
    ])
    api.create_commit(MODEL, commit_message="update the config", operations=[
        CommitOperationAdd("config.json", json.dumps({"model_type": "bert", "n": 2}).encode())])
    n = DATASET_ROWS
    table = pa.table({"idx": list(range(n)), "text": [f"row {i}: some text here" for i in range(n)],
                      "label": [i % 3 for i in range(n)], "score": [i / n for i in range(n)]})
    out = io.BytesIO()
    pq.write_table(table, out)
    api.create_repo(DATASET, repo_type="dataset")
    api.create_commit(DATASET, repo_type="dataset", commit_message="data", operations=[
        CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# Rows\n"),
        CommitOperationAdd("data/train-00000-of-00001.parquet", out.getvalue())])


PAGES = {  # name -> (path, target ms)
    "/models page 1": ("/models", 30.0),
    "/models?pipeline_tag&sort=downloads p=20": (
        "/models?pipeline_tag=text-classification&sort=downloads&p=20", 30.0),
    "/models?search=": ("/models?search=model-01", 30.0),
    # A new filter combination on every call: the page's total and facet counts, which the
    # server caches per query until the next commit, are counted afresh each time.
    "/models, 3 filters, uncached counts": (
        "/models?pipeline_tag={}&library={}&language={}", 30.0),
    "model page": (f"/{MODEL}", 50.0),
    "tree page": (f"/{MODEL}/tree/main", 50.0),
    f"dataset viewer ({DATASET_ROWS} rows)": (f"/datasets/{DATASET}/viewer", 50.0),
}


def combinations():
    """Every (task, library, language) filter once, then again: a fresh cache key per call
    for the first len(PIPELINES) * len(LIBRARIES) * len(LANGS) = 240 calls."""
    from hub import LANGS, LIBRARIES, PIPELINES

    while True:
        for task in PIPELINES:
            for library in LIBRARIES:
                for lang in LANGS:
                    yield task, library, lang


def get(conn: http.client.HTTPConnection, path: str) -> tuple[float, float]:
    """(server ms from Server-Timing, client round trip ms) of one GET."""
    t = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    client = (time.perf_counter() - t) * 1000
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
    timing = resp.getheader("server-timing") or ""
    return float(timing.split("dur=")[1]), client


def main() -> list[Row]:
    from hub import seed_repositories

    print(f"web: probe {probe_gflops():.1f} GFLOP/s; "
          f"{environment('fastapi', 'uvicorn', 'jinja2', 'sqlalchemy')}")
    with tempfile.TemporaryDirectory(prefix="cove-bench-web-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        cove("admin", "user", "create", USER, data=data)
        token = cove("admin", "token", "create", USER, "--role", "write", "--name", "b",
                     data=data)
        seconds = seed_repositories(data, N_REPOS)
        print(f"web: seeded {N_REPOS} repositories in {seconds:.2f} s")
        proc, url = start_server(data)
        try:
            make_content(url, token)
            conn = http.client.HTTPConnection(urlsplit(url).netloc)
            server: dict[str, list[float]] = {k: [] for k in PAGES}
            client: dict[str, list[float]] = {k: [] for k in PAGES}
            fresh = combinations()

            def path_of(template: str) -> str:
                return template.format(*next(fresh)) if "{}" in template else template

            for path, _ in PAGES.values():  # warm-up (and a check that each page answers)
                for _ in range(5 if "{}" not in path else 1):
                    get(conn, path_of(path))
            print(f"web: {REPEATS} rounds of {CALLS} GETs per page, one keep-alive "
                  "connection ...")
            for _ in range(REPEATS):
                for name, (path, _) in PAGES.items():
                    for _ in range(CALLS):
                        s, c = get(conn, path_of(path))
                        server[name].append(s)
                        client[name].append(c)
            conn.close()
        finally:
            stop(proc)
    rows = []
    for name, (_, target) in PAGES.items():
        round_trip = Stats.of(client[name])
        rows.append(Row("web", f"{name} ({N_REPOS} repos), server time", "ms",
                        Stats.of(server[name]), Stats.fixed(target), "target", "<= 1.00",
                        f"client round trip {round_trip.show()} ms"))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        finish(main())
