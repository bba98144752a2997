"""The Hub server, side by side with its references, in one run.

1. GET of a 1 GiB LFS file over loopback: `cove serve` against nginx serving the very same file
   (the object under DATA/lfs) in two configurations (sendfile as Debian ships it, and
   read/write with 4 MiB buffers, faster here), with the same plain client (http.client,
   8 MiB readinto); also huggingface_hub's hf_hub_download from Cove, for reference.
   Goal: Cove >= 70% of nginx.
2. Upload of a 1 GiB file through HfApi.upload_file (HF_HUB_DISABLE_XET=1) against the disk's
   sequential write of the same bytes (8 MiB writes, fsync) on the same disk. Goal: >= 50%.
3. Latency of model_info and list_models(limit=50, sort="downloads") with 10,000 repositories
   in the database, through a persistent httpx client and through HfApi. No reference server:
   the "theirs" column is the target (model_info <= 5 ms, list_models <= 30 ms).

Runs without nginx (its rows are then skipped, with how to install it). COVE_BENCH_GIB and
COVE_BENCH_REPEATS change the file size and the repeats (default 1 GiB, 5).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

# huggingface_hub reads these at import time; 2.x uploads through Xet unless told not to.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops  # noqa: E402
from _server import cove, free_port, start_cove, stop, wait_http  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
SIZE = int(float(os.environ.get("COVE_BENCH_GIB", "1")) * GIB)
REPEATS = max(5, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
N_REPOS = 10_000
LATENCY_CALLS = 200  # per measured operation, in REPEATS interleaved rounds
READ_BUF = 8 * MIB
USER = "bench"


# -- processes ---------------------------------------------------------------------------
def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


# Two ways nginx serves a file: sendfile (Debian's shipped nginx.conf), and read()+write() with
# large buffers, which is faster over loopback on these machines; Cove is held to both.
NGINX_MODES = {
    "sendfile": "sendfile on; tcp_nopush on;",
    "4m buffers": "sendfile off; output_buffers 2 4m;",
}


def start_nginx(root: Path, work: Path, mode: str) -> tuple[subprocess.Popen, str] | None:
    """nginx (one worker) serving `root` (Cove's LFS folder) under /lfs/."""
    binary = nginx_binary()
    if binary is None:
        return None
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    temp = "".join(f"    {d}_temp_path {work}/{d};\n"
                   for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = work / "nginx.conf"
    conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    {NGINX_MODES[mode]}
    default_type application/octet-stream;
{temp}
    server {{
        listen 127.0.0.1:{port};
        location /lfs/ {{ alias {root}/; }}
        location = / {{ return 200 "ok"; }}
    }}
}}
""")
    log = work / "error.log"
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(work)],
                            stdout=open(work / "stdout.log", "ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", proc, log if log.exists() else work / "stdout.log")
    return proc, url


# -- measurements ------------------------------------------------------------------------
def get_seconds(url: str, size: int, buf: bytearray) -> float:
    """Seconds for one GET of `url` (a fresh connection), reading and discarding the body."""
    parts = urlsplit(url)
    t = time.perf_counter()
    conn = http.client.HTTPConnection(parts.netloc)
    conn.request("GET", parts.path)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"GET {url}: {resp.status} {resp.read()[:200]!r}")
    view, got = memoryview(buf), 0
    while n := resp.readinto(view):
        got += n
    elapsed = time.perf_counter() - t
    conn.close()
    if got != size:
        raise RuntimeError(f"GET {url}: {got} bytes, expected {size}")
    return elapsed


def disk_write_seconds(src: Path, dst: Path, buf: bytearray) -> float:
    """Seconds to copy `src` (in the page cache) to `dst` with 8 MiB writes and an fsync."""
    view = memoryview(buf)
    t = time.perf_counter()
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        while n := f.readinto(view):
            g.write(view[:n])
        os.fsync(g.fileno())
    elapsed = time.perf_counter() - t
    dst.unlink()
    return elapsed


def make_big_file(path: Path, size: int) -> None:
    """`size` bytes of incompressible data (a 64 MiB random block, repeated)."""
    block = os.urandom(min(64 * MIB, size))
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[:left])
            left -= min(len(block), left)


def stamp(path: Path, i: int) -> None:
    """Make the file's content (so its sha256) unique to upload `i`, in place."""
    with open(path, "r+b") as f:
        f.write(f"cove-bench-{i:08d}-{uuid.uuid4().hex}".encode())


def gbps(size: int, seconds: list[float]) -> Stats:
    return Stats.of([size / s / 1e9 for s in seconds])


# -- the database of 10,000 repositories -------------------------------------------------
PIPELINES = ["text-classification", "token-classification", "fill-mask", "text-generation",
             "feature-extraction", "translation", "summarization", "image-classification"]
LIBRARIES = ["transformers", "sentence-transformers", "peft", "timm", "diffusers"]
LANGS = ["en", "fr", "de", "es", "zh", "ja"]


def seed_repositories(data: Path, n: int) -> float:
    """Insert `n` public model rows (and their tag rows) straight into the server's SQLite.

    Only the rows: listings read SQL alone, and the one repository that model_info is asked
    about is a real one made through the API.
    """
    from sqlalchemy import func, insert, select

    from cove.server.db import Repository, RepoTag, make_engine

    rng = random.Random(1234)
    t = time.perf_counter()
    engine = make_engine(f"sqlite:///{data / 'cove.db'}")
    now = datetime.now().replace(microsecond=0)
    with engine.begin() as conn:
        first = (conn.scalar(select(func.max(Repository.id))) or 0) + 1
        repos, tags = [], []
        for i in range(n):
            pipeline, library, lang = rng.choice(PIPELINES), rng.choice(LIBRARIES), rng.choice(LANGS)
            repo_tags = [library, "safetensors", pipeline, lang, f"license:{rng.choice(['mit', 'apache-2.0'])}"]
            created = now - timedelta(minutes=rng.randrange(500_000))
            repos.append({
                "id": first + i, "type": "model", "namespace": f"org{i % 200:03d}",
                "name": f"model-{i:05d}", "storage_key": uuid.uuid4().hex, "private": i % 20 == 0,
                "sdk": None, "created_at": created, "last_modified": created,
                "sha": f"{rng.getrandbits(160):040x}",
                "card_data": {"license": repo_tags[-1][8:], "language": [lang], "tags": [library]},
                "tags": repo_tags, "pipeline_tag": pipeline, "library_name": library,
                "downloads": int(rng.paretovariate(1.2) * 10), "likes": rng.randrange(100),
            })
            tags.extend({"repo_id": first + i, "tag": tg} for tg in repo_tags)
        conn.execute(insert(Repository), repos)
        conn.execute(insert(RepoTag), tags)
    engine.dispose()
    return time.perf_counter() - t


README = """---
license: apache-2.0
language: [en]
library_name: transformers
pipeline_tag: text-classification
tags: [bench, safetensors]
---
# A model for the latency benchmark
"""


# -- the benchmark -----------------------------------------------------------------------
class Bench:
    """One Cove server on a temp data folder, a write token, and the rows measured so far."""

    def __init__(self, tmp: Path) -> None:
        from huggingface_hub import HfApi

        self.tmp = tmp
        self.data = tmp / "data"
        self.data.mkdir()
        cove("admin", "user", "create", USER, data=self.data)
        self.token = cove("admin", "token", "create", USER, "--role", "write", "--name", "bench",
                          data=self.data)
        self.server, self.url = start_cove(self.data)
        self.api = HfApi(endpoint=self.url, token=self.token)
        self.webs: dict[str, tuple[subprocess.Popen, str]] = {}
        self.buf = bytearray(READ_BUF)
        self.label = f"{SIZE / GIB:g} GiB" if SIZE >= GIB else f"{SIZE // MIB} MiB"

    def object_path(self, oid: str) -> Path:
        return self.data / "lfs" / oid[:2] / oid[2:4] / oid

    def close(self) -> None:
        for proc, _ in self.webs.values():
            stop(proc)
        self.webs.clear()
        stop(self.server)

    def upload(self, repo_id: str, big: Path) -> tuple[Row, str]:
        """HfApi.upload_file against the disk's write of the same bytes; the last object's oid."""
        print(f"hub: upload {self.label} x{REPEATS}, alternating HfApi.upload_file / "
              "disk write+fsync ...")
        up, disk = [], []
        previous = None
        for i in range(REPEATS):
            stamp(big, i)
            t = time.perf_counter()
            self.api.upload_file(path_or_fileobj=str(big), path_in_repo="model.bin",
                                 repo_id=repo_id)
            up.append(time.perf_counter() - t)
            disk.append(disk_write_seconds(big, self.tmp / "disk-write.bin", self.buf))
            print(f"  upload {SIZE / up[-1] / 1e9:.3f}   disk {SIZE / disk[-1] / 1e9:.3f} GB/s")
            siblings = self.api.model_info(repo_id, files_metadata=True).siblings
            oid = next(s.lfs.sha256 for s in siblings if s.rfilename == "model.bin")
            if previous:  # keep only the latest object: one copy on the disk at a time
                self.object_path(previous).unlink()
            previous = oid
        row = Row("hub", f"upload {self.label}, HfApi.upload_file", "GB/s", gbps(SIZE, up),
                  gbps(SIZE, disk), "disk write+fsync", ">= 0.50",
                  "end to end: client sha256, preupload, LFS batch, PUT, verify, commit")
        return row, previous

    def download(self, repo_id: str, oid: str) -> list[Row]:
        """The same object from Cove and from nginx (each configuration), alternating."""
        from huggingface_hub import hf_hub_download

        for mode in NGINX_MODES:
            started = start_nginx(self.data / "lfs", self.tmp / f"nginx-{len(self.webs)}", mode)
            if started is None:
                print("hub: nginx is not installed: its rows are skipped. Install it with "
                      "`sudo apt-get install -y nginx` (Debian/Ubuntu) and run again.")
                break
            self.webs[mode] = started
        rel = f"lfs/{oid[:2]}/{oid[2:4]}/{oid}"
        urls = {"cove": f"{self.url}/{repo_id}/resolve/main/model.bin",
                **{f"nginx {mode}": f"{u}/{rel}" for mode, (_, u) in self.webs.items()}}
        cache = self.tmp / "hf-cache"
        print(f"hub: GET {self.label} x{REPEATS}, alternating {' / '.join(urls)} / "
              "hf_hub_download(cove) ...")
        for u in urls.values():  # warm-up: the object is in the page cache for all
            get_seconds(u, SIZE, self.buf)
        got: dict[str, list[float]] = {name: [] for name in [*urls, "hf_hub_download"]}
        for _ in range(REPEATS):
            for name, u in urls.items():
                got[name].append(get_seconds(u, SIZE, self.buf))
            t = time.perf_counter()
            hf_hub_download(repo_id, "model.bin", endpoint=self.url, token=self.token,
                            cache_dir=cache, force_download=True)
            got["hf_hub_download"].append(time.perf_counter() - t)
            shutil.rmtree(cache)
            print("  " + "   ".join(f"{k} {SIZE / v[-1] / 1e9:.3f}" for k, v in got.items())
                  + " GB/s")
        for proc, _ in self.webs.values():
            stop(proc)
        ours = gbps(SIZE, got["cove"])
        nginx = {m: gbps(SIZE, got[f"nginx {m}"]) for m in self.webs}
        rows = [Row("hub", f"GET {self.label} LFS file, http.client", "GB/s", ours,
                    nginx.get(mode), f"nginx ({mode})", ">= 0.70") for mode in NGINX_MODES]
        best = max(nginx.values(), key=lambda st: st.median, default=None)
        rows.append(Row(
            "hub", f"GET {self.label}, hf_hub_download from cove", "GB/s",
            gbps(SIZE, got["hf_hub_download"]), best, "nginx (faster mode)", "",
            "for reference: bound by huggingface_hub's own download stack and its cache writes"))
        return rows

    def latency(self) -> list[Row]:
        """model_info and list_models with N_REPOS repositories, httpx and HfApi alternating."""
        import httpx
        from huggingface_hub import CommitOperationAdd

        seconds = seed_repositories(self.data, N_REPOS)
        print(f"hub: seeded {N_REPOS} repositories in {seconds:.2f} s")
        api, info_id = self.api, f"{USER}/info-model"
        api.create_repo(info_id)
        api.create_commit(info_id, commit_message="files", operations=[
            CommitOperationAdd("README.md", README.encode()),
            CommitOperationAdd("config.json", json.dumps({"model_type": "bert"}).encode()),
            CommitOperationAdd("tokenizer.json", b"{}" * 1000),
            CommitOperationAdd("vocab.txt", b"[PAD]\n" * 1000),
            CommitOperationAdd("model.safetensors", os.urandom(MIB)),
        ])
        listing = {"limit": 50, "sort": "downloads"}
        ops = {
            "model_info, httpx": lambda c: c.get(f"/api/models/{info_id}").raise_for_status(),
            "model_info, HfApi": lambda c: api.model_info(info_id),
            "list_models limit=50 sort=downloads, httpx": lambda c: c.get(
                "/api/models", params=listing).raise_for_status(),
            "list_models limit=50 sort=downloads, HfApi": lambda c: list(
                api.list_models(limit=50, sort="downloads")),
        }
        timings: dict[str, list[float]] = {k: [] for k in ops}
        headers = {"authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=headers) as client:
            page = client.get("/api/models", params=listing).json()
            assert len(page) == 50 and page[0]["downloads"] >= page[-1]["downloads"], page[:2]
            for op in ops.values():  # warm-up
                for _ in range(10):
                    op(client)
            per_round = -(-LATENCY_CALLS // REPEATS)
            print(f"hub: latency, {per_round * REPEATS} calls each in {REPEATS} alternating "
                  "rounds ...")
            for _ in range(REPEATS):
                for name, op in ops.items():
                    for _ in range(per_round):
                        t = time.perf_counter()
                        op(client)
                        timings[name].append((time.perf_counter() - t) * 1000)
        targets = {"model_info": 5.0, "list_models": 30.0}
        return [Row("hub", f"{name} ({N_REPOS} repos)", "ms", Stats.of(samples),
                    Stats.fixed(targets[name.split()[0].rstrip(",")]), "target", "<= 1.00")
                for name, samples in timings.items()]

    def concurrent(self, n: int = 100) -> list[Row]:
        """n clients at once, each GETting a 4 MiB LFS file and a small file: errors counted."""
        from concurrent.futures import ThreadPoolExecutor

        from huggingface_hub import CommitOperationAdd

        repo = f"{USER}/many"
        self.api.create_repo(repo)
        blob = os.urandom(4 * MIB)
        self.api.create_commit(repo, commit_message="files", operations=[
            CommitOperationAdd("weights.safetensors", blob),
            CommitOperationAdd("config.json", b'{"model_type": "bert"}')])
        urls = [f"{self.url}/{repo}/resolve/main/weights.safetensors",
                f"{self.url}/{repo}/resolve/main/config.json"]

        def client(_: int) -> bool:
            try:
                buf = bytearray(MIB)
                return all(get_seconds(u, size, buf) > 0
                           for u, size in zip(urls, (len(blob), 22), strict=True))
            except Exception:
                return False

        walls, errors = [], 0
        print(f"hub: {n} concurrent clients x{REPEATS} ...")
        for _ in range(REPEATS):
            t = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                ok = list(pool.map(client, range(n)))
            walls.append(time.perf_counter() - t)
            errors += ok.count(False)
            print(f"  {walls[-1]:.2f} s, {ok.count(False)} errors")
        return [Row("hub", f"{n} concurrent downloads (4 MiB + small file each)", "s",
                    Stats.of(walls), None, "no reference", "",
                    f"{errors} errors in {n * REPEATS} clients")]


def main() -> list[Row]:
    env = environment("huggingface_hub", "httpx", "fastapi", "starlette", "uvicorn", "httptools",
                      "uvloop", "sqlalchemy", "dulwich", "torch")
    print(f"hub: {env}")
    if nginx := nginx_binary():
        v = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        print(f"hub: {v}")
    print(f"hub: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-hub-"))
    bench = None
    try:
        bench = Bench(tmp)
        repo_id = f"{USER}/big"
        bench.api.create_repo(repo_id)
        big = tmp / "big.bin"
        make_big_file(big, SIZE)
        upload_row, oid = bench.upload(repo_id, big)
        big.unlink()
        rows = [*bench.download(repo_id, oid), upload_row]
        bench.object_path(oid).unlink()
        rows += bench.latency()
        rows += bench.concurrent()
    except BaseException:
        log = tmp / "data" / "server.log"
        if log.exists():
            print(f"hub: failed; the end of cove's log:\n{log.read_text()[-4000:]}",
                  file=sys.stderr)
        raise
    finally:
        if bench is not None:
            bench.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"hub: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    finish(main())
