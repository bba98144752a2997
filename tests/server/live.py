"""A real `cove serve` process on a free port with a temp data folder, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cove(*args: str, data: Path) -> str:
    """Run a `cove` verb against `data` and return what it printed."""
    out = subprocess.run(
        [sys.executable, "-m", "cove", *args, "--data", str(data)],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


@dataclass
class LiveServer:
    data: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    # The demo content a first start imports (cove/server/demo.py): off unless a test asks.
    demo: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LiveServer:
        log = open(self.data / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cove", "serve", "--port", str(self.port),
             "--data", str(self.data), "--log-level", "warning",
             *([] if self.demo else ["--no-demo"])],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cove serve exited: {(self.data / 'server.log').read_text()}")
            try:
                httpx.get(f"{self.url}/api/models?limit=1", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("cove serve did not start in time")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
