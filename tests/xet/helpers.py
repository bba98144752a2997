"""What the Xet tests share: a live server, CAS tokens, and a reader of reconstructions."""

from __future__ import annotations

import socket
import threading

import httpx

from cove.server.xet.xorb import decode_chunk, iter_chunks


def cas_token(url: str, repo_id: str, token: str | None, op: str = "read") -> dict:
    r = httpx.get(f"{url}/api/models/{repo_id}/xet-{op}-token/main",
                  headers={"authorization": f"Bearer {token}"} if token else {})
    r.raise_for_status()
    return r.json()


def read_reconstruction(recon: dict) -> bytes:
    """A file's bytes from a reconstruction answer, fetched as the spec says a client does."""
    out = []
    skip = recon["offset_into_first_range"]
    for term in recon["terms"]:
        fetch = next(
            f for f in recon["fetch_info"][term["hash"]]
            if f["range"]["start"] <= term["range"]["start"]
            and f["range"]["end"] >= term["range"]["end"]
        )
        rng = fetch["url_range"]
        r = httpx.get(fetch["url"], headers={"Range": f"bytes={rng['start']}-{rng['end']}"})
        assert r.status_code == 206, r.text
        chunks = [decode_chunk(s, d, n) for _, s, d, n in iter_chunks(r.content)]
        first = fetch["range"]["start"]
        data = b"".join(chunks[term["range"]["start"] - first : term["range"]["end"] - first])
        assert len(data) == term["unpacked_length"]
        out.append(data)
    return b"".join(out)[skip:]


class CountingProxy:
    """A TCP proxy to `target_port` that counts the bytes clients send through it."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sent = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the server is down (killed by a test)
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()
