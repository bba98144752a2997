"""The hub client: cove.hub.snapshot_download against huggingface_hub.snapshot_download.

The same repositories on the same `cove serve`, downloaded alternately into fresh cache
folders (A B A B ...): one 500 MB file (goal: no slower, ratio of times <= 1.0) and 500 small
files (goal: at least 1.5x faster, ratio of times <= 0.67). Peak RSS of each client during the
large download is reported too (streamed downloads keep it flat). COVE_BENCH_REPEATS changes
the repeats (default 5) and COVE_BENCH_CLIENT_MB the large file's size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# huggingface_hub reads these at import time; 2.x would use Xet without the first.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, Stats, environment, finish, probe_gflops  # noqa: E402
from _server import cove, start_cove, stop  # noqa: E402

REPEATS = max(5, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
BIG_MB = int(os.environ.get("COVE_BENCH_CLIENT_MB", "500"))
N_SMALL = 500
USER = "bench"

# Runs one download in a fresh process and prints "seconds peak_rss_kib": the RSS shows
# whether the client streams, and a fresh process keeps one client's pools out of the other's.
CHILD = r"""
import os, sys, time
which, repo, url, token, cache = sys.argv[1:6]
if which == "cove":
    from cove.hub import snapshot_download
else:
    from huggingface_hub import snapshot_download
t = time.perf_counter()
snapshot_download(repo, endpoint=url, token=token, cache_dir=cache)
# VmHWM, not ru_maxrss: the latter is inherited from the parent across fork and exec.
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(time.perf_counter() - t, hwm)
"""


def download(which: str, repo: str, url: str, token: str, cache: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, which, repo, url, token, str(cache)],
                         check=True, capture_output=True, text=True, env=os.environ)
    seconds, rss_kib = out.stdout.split()
    shutil.rmtree(cache, ignore_errors=True)
    return float(seconds), int(rss_kib) / 1024


def main() -> list[Row]:
    print(f"hub_client: {environment('huggingface_hub', 'httpx', 'uvicorn', 'torch')}")
    print(f"hub_client: probe before: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-client-"))
    server = None
    try:
        data = tmp / "data"
        data.mkdir()
        cove("admin", "user", "create", USER, data=data)
        token = cove("admin", "token", "create", USER, "--role", "write", data=data)
        server, url = start_cove(data)
        from huggingface_hub import HfApi

        api = HfApi(endpoint=url, token=token)
        big, small = f"{USER}/big", f"{USER}/small"
        src = tmp / "src"
        (src / "big").mkdir(parents=True)
        with open(src / "big" / "model.safetensors", "wb") as f:
            for _ in range(BIG_MB):
                f.write(os.urandom(1 << 20))
        for i in range(N_SMALL):
            p = src / "small" / f"part-{i // 100}" / f"file-{i:04d}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f'{{"index": {i}, "payload": "{os.urandom(600).hex()}"}}')
        for repo, folder in ((big, src / "big"), (small, src / "small")):
            api.create_repo(repo)
            api.upload_folder(repo_id=repo, folder_path=folder)
        shutil.rmtree(src)

        rows = []
        for label, repo in ((f"1 file of {BIG_MB} MB", big), (f"{N_SMALL} small files", small)):
            times = {"cove": [], "hf": []}
            rss = {"cove": [], "hf": []}
            print(f"hub_client: snapshot_download {label} x{REPEATS}, alternating cove / "
                  "huggingface_hub ...")
            for i in range(REPEATS):
                for which in ("cove", "hf"):
                    s, r = download(which, repo, url, token, tmp / f"cache-{which}-{i}")
                    times[which].append(s)
                    rss[which].append(r)
                print(f"  cove {times['cove'][-1]:.3f} s   huggingface_hub {times['hf'][-1]:.3f} s")
            goal = "<= 1.0" if repo == big else "<= 0.67"
            rows.append(Row("hub_client", f"snapshot_download, {label}", "s",
                            Stats.of(times["cove"]), Stats.of(times["hf"]), "huggingface_hub",
                            goal, "fresh process and cache each time"))
            rows.append(Row("hub_client", f"peak RSS during it, {label}", "MiB",
                            Stats.of(rss["cove"]), Stats.of(rss["hf"]), "huggingface_hub", "",
                            "whole process (interpreter and imports included)"))
    finally:
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"hub_client: probe after: {probe_gflops():.0f} GFLOP/s (fp32 matmul 2048^2)")
    return rows


if __name__ == "__main__":
    finish(main())
