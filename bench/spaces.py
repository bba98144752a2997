"""Spaces: what the Hub's reverse proxy adds to a Gradio API call, and how fast an unchanged
Space comes back (issue 18, Done when 4).

One `cove serve` (Spaces on, no demo) on a temp data folder; one Gradio Space (a text
reversing function) pushed with huggingface_hub. The Space environments live in
bench/.cache/spaces (COVE_BENCH_SPACES_DIR), so Gradio is installed on the first run only.

- Proxy overhead: the same Gradio API call (POST /gradio_api/call/reverse, then its
  server-sent answer) straight to the app's loopback port and through the Hub at
  /spaces/{owner}/{name}/app, alternately, one keep-alive connection each; the medians side by
  side and the median of the paired differences. Target: the proxy adds <= 5 ms.
  Beside the times, the Hub process's CPU time per proxied call against its CPU time per
  small Hub request (GET runtime): a cost the machine's load inflates much less.
- The Space's page and the /spaces listing (client round trips), against bench/web.py's
  targets for a repository page (50 ms) and a list page (30 ms).
- Restart with the cached environment: `restart_space` until the app answers again, and a
  server restart until the first call through the proxy answers (Spaces start lazily, on that
  visit). Target: <= 10 s. No pip install runs (checked in the build log).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import statistics
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

HERE = Path(__file__).resolve().parent
REPEATS = max(5, int(os.environ.get("COVE_BENCH_REPEATS", "5")))
CALLS = 40  # per target and round
USER = "bench"
SPACE = f"{USER}/reverse"
APP = '''import gradio as gr


def reverse(text):
    return text[::-1]


gr.Interface(fn=reverse, inputs="text", outputs="text", api_name="reverse").launch()
'''


def spaces_dir() -> Path:
    """The Spaces folder kept between runs; its parents must be traversable by the Spaces'
    users, as the runner checks."""
    path = Path(os.environ.get("COVE_BENCH_SPACES_DIR") or HERE / ".cache" / "spaces")
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o711)
    return path


class Server:
    """`cove serve` on a data folder, restartable on the same port."""

    def __init__(self, data: Path, spaces: Path) -> None:
        self.data, self.spaces, self.port = data, spaces, free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.data / "server.log"
        env = {**os.environ, "COVE_SPACES_DIR": str(self.spaces)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cove", "serve", "--port", str(self.port), "--data",
             str(self.data), "--log-level", "warning", "--no-demo"],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)
        wait_http(f"{self.url}/api/models?limit=1", self.proc, log)

    def stop(self) -> None:
        stop(self.proc)


def push(url: str, token: str, tmp: Path):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=url, token=token)
    api.create_repo(SPACE, repo_type="space", space_sdk="gradio")
    folder = tmp / "space"
    folder.mkdir()
    (folder / "README.md").write_text("---\ntitle: reverse\nsdk: gradio\n---\n")
    (folder / "app.py").write_text(APP)
    api.upload_folder(repo_id=SPACE, repo_type="space", folder_path=folder)
    return api


def wait_running(api, timeout: float) -> float:
    """Seconds until the Space's stage is RUNNING (polled every 50 ms); fails on an error."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        stage = api.get_space_runtime(SPACE).stage
        if stage == "RUNNING":
            return time.monotonic() - began
        if stage in ("BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR", "NO_APP_FILE"):
            log = "".join(api.fetch_space_logs(SPACE, build=stage != "RUNTIME_ERROR"))
            raise RuntimeError(f"{SPACE} is {stage}:\n{log[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{SPACE} did not run within {timeout} s")


def app_port(api) -> int:
    """The app's own loopback port, as Gradio prints it in the run log (it may print it a
    moment after its port answers, which is when the Space counts as RUNNING)."""
    deadline = time.monotonic() + 30
    while True:
        log = "".join(api.fetch_space_logs(SPACE))
        ports = re.findall(r"Running on local URL:\s+http://127\.0\.0\.1:(\d+)", log)
        if ports:
            return int(ports[-1])
        if time.monotonic() > deadline:
            raise RuntimeError(f"no port in the run log:\n{log[-2000:]}")
        time.sleep(0.5)


def cpu_ms(pid: int) -> float:
    """CPU time the process has used so far (all its threads, from the scheduler's
    nanosecond counts), in ms."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            pass
    return total / 1e6


class GradioCaller:
    """One keep-alive connection calling the app's `reverse` through Gradio's REST API."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.prefix = parts.path.rstrip("/")
        self.conn = http.client.HTTPConnection(parts.netloc, timeout=60)

    def call(self, text: str) -> list:
        body = json.dumps({"data": [text]})
        self.conn.request("POST", f"{self.prefix}/gradio_api/call/reverse", body=body,
                          headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"call: {resp.status} {raw[:300]!r}")
        event_id = json.loads(raw)["event_id"]
        self.conn.request("GET", f"{self.prefix}/gradio_api/call/reverse/{event_id}")
        resp = self.conn.getresponse()
        stream = resp.read().decode()
        match = re.search(r"event: complete\ndata: (.*)\n", stream)
        if resp.status != 200 or match is None:
            raise RuntimeError(f"answer: {resp.status} {stream[:300]!r}")
        return json.loads(match.group(1))

    def close(self) -> None:
        self.conn.close()


PAGES = {"Space page (App tab, running)": f"/spaces/{SPACE}", "/spaces listing": "/spaces",
         # The floor of any request to the Hub on this machine: a small JSON answer.
         "runtime API": f"/api/spaces/{SPACE}/runtime"}


def page_times(url: str, pid: int) -> tuple[dict[str, list[float]], list[float]]:
    """Client round trips (ms) of PAGES, one keep-alive connection: the Space's page and the
    listing (held to bench/web.py's targets for a repository page and a list page), and the
    runtime API as the floor of a Hub request; and the server's (`pid`) CPU ms per runtime
    request, one figure per round."""
    conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=30)
    out: dict[str, list[float]] = {name: [] for name in PAGES}
    cpu = []
    for _ in range(REPEATS):
        for name, path in PAGES.items():
            began = cpu_ms(pid)
            for _ in range(CALLS):
                t = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                out[name].append((time.perf_counter() - t) * 1000)
                # The Space page of a running Space shows its frame.
                shows_app = not path.startswith("/spaces/") or b"space-app" in body
                if resp.status != 200 or not shows_app:
                    raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
            if name == "runtime API":
                cpu.append((cpu_ms(pid) - began) / CALLS)
    conn.close()
    return out, cpu


def gradio_version(spaces: Path) -> str:
    found = sorted(spaces.glob("envs/*/lib/python*/site-packages/gradio-*.dist-info"))
    return found[-1].name.removeprefix("gradio-").removesuffix(".dist-info") if found else "?"


def main() -> list[Row]:
    print(f"spaces: probe {probe_gflops():.1f} GFLOP/s; "
          f"{environment('fastapi', 'uvicorn', 'httpx', 'websockets', 'huggingface_hub')}")
    spaces = spaces_dir()
    with tempfile.TemporaryDirectory(prefix="cove-bench-spaces-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        cove("admin", "user", "create", USER, data=data)
        token = cove("admin", "token", "create", USER, "--role", "write", "--name", "b",
                     data=data)
        server = Server(data, spaces)
        server.start()
        try:
            api = push(server.url, token, Path(tmp))
            first = wait_running(api, 900)
            print(f"spaces: first build and start {first:.1f} s (gradio "
                  f"{gradio_version(spaces)}; environments in {spaces})")
            direct = GradioCaller(f"http://127.0.0.1:{app_port(api)}")
            proxied = GradioCaller(f"{server.url}/spaces/{SPACE}/app")
            for caller in (direct, proxied):  # warm-up, and a check of the answer
                for _ in range(5):
                    assert caller.call("abc") == ["cba"]
            print(f"spaces: {REPEATS} rounds of {CALLS} calls each way, alternating ...")
            times: dict[str, list[float]] = {"direct": [], "proxy": []}
            diffs, proxy_cpu = [], []
            for _ in range(REPEATS):
                began = cpu_ms(server.proc.pid)  # only the proxied calls reach the Hub
                for i in range(CALLS):
                    pair = {}
                    # Alternate which goes first, so neither always meets a warmer app.
                    order = ((direct, "direct"), (proxied, "proxy"))
                    for caller, name in order if i % 2 == 0 else order[::-1]:
                        t = time.perf_counter()
                        caller.call("Cove")
                        pair[name] = (time.perf_counter() - t) * 1000
                        times[name].append(pair[name])
                    diffs.append(pair["proxy"] - pair["direct"])
                proxy_cpu.append((cpu_ms(server.proc.pid) - began) / CALLS)
            direct.close()
            proxied.close()
            pages, request_cpu = page_times(server.url, server.proc.pid)

            restarts, cold = [], []
            for _ in range(REPEATS):
                began = time.monotonic()
                api.restart_space(SPACE)
                wait_running(api, 120)
                answer = GradioCaller(f"{server.url}/spaces/{SPACE}/app")
                assert answer.call("xy") == ["yx"]
                answer.close()
                restarts.append(time.monotonic() - began)
                build = "".join(api.fetch_space_logs(SPACE, build=True))
                if "Using the cached environment" not in build:
                    raise RuntimeError(f"the restart did not reuse the environment:\n{build}")

                server.stop()
                server.start()
                began = time.monotonic()  # from the first visit: Spaces start lazily
                answer = GradioCaller(f"{server.url}/spaces/{SPACE}/app")
                assert answer.call("xy") == ["yx"]
                answer.close()
                cold.append(time.monotonic() - began)
        finally:
            server.stop()
    print(f"spaces: probe after {probe_gflops():.1f} GFLOP/s")
    d, p = Stats.of(times["direct"]), Stats.of(times["proxy"])
    return [
        Row("spaces", "Gradio API call (call + SSE answer), through the Hub's proxy", "ms",
            p, d, "straight to the app's port", note=f"proxy adds "
            f"{p.median - d.median:.2f} ms to the median (target <= 5 ms)"),
        Row("spaces", "proxy overhead per call (paired proxy - direct)", "ms",
            Stats.of(diffs), Stats.fixed(5.0), "target", "<= 1.00",
            f"mean {statistics.fmean(diffs):.2f} ms; a call is two requests through the proxy, "
            f"and one small Hub request (GET runtime) takes "
            f"{statistics.median(pages['runtime API']):.2f} ms here"),
        Row("spaces", "Hub CPU per proxied call (two requests)", "ms", Stats.of(proxy_cpu),
            Stats.of(request_cpu), "Hub CPU per small Hub request (GET runtime)", "",
            "CPU time of the Hub's process (all threads), per round of "
            f"{CALLS}: the machine's load inflates it much less than the round trips"),
        Row("spaces", "Space page (App tab, running), client round trip", "ms",
            Stats.of(pages["Space page (App tab, running)"]), Stats.fixed(50.0), "target",
            "<= 1.00", "bench/web.py's target for a repository page"),
        Row("spaces", "/spaces listing, client round trip", "ms",
            Stats.of(pages["/spaces listing"]), Stats.fixed(30.0), "target", "<= 1.00",
            "bench/web.py's target for a list page"),
        Row("spaces", "restart_space with the cached environment, to an answer", "s",
            Stats.of(restarts), Stats.fixed(10.0), "target", "<= 1.00"),
        Row("spaces", "server restart, first visit to an answer (cached environment)", "s",
            Stats.of(cold), Stats.fixed(10.0), "target", "<= 1.00",
            "the Space sleeps after a server start and starts on this visit"),
    ]


if __name__ == "__main__":
    finish(main())
