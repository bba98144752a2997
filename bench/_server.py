"""Starting `cove serve` for a benchmark: a temp data folder, a free port, a clean stop."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=1)
            conn.request("GET", urlsplit(url).path or "/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cove(*args: str, data: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "cove", *args, "--data", str(data)],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def start_cove(data: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = data / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cove", "serve", "--port", str(port), "--data", str(data),
         "--log-level", "warning", "--no-demo"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/api/models?limit=1", proc, log)
    return proc, url
