"""A TCP proxy for tests that cuts or corrupts a download in flight."""

from __future__ import annotations

import socket
import threading


class FaultyProxy:
    """Forwards to `upstream_port`; the first response stream may be cut or corrupted.

    mode "cut": close the connection after `after` bytes of response (once).
    mode "corrupt": flip the byte at response offset `after` (every connection that far).
    Requests seen are kept in `requests` (their first bytes) to check for Range headers.
    """

    def __init__(self, upstream_port: int, mode: str, after: int) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        self.after = after
        self.requests: list[bytes] = []
        self.faults = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(32)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                self.requests.append(data[:2048])
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        sent = 0
        try:
            while data := upstream.recv(65536):
                if sent <= self.after < sent + len(data):
                    if self.mode == "cut" and self.faults == 0:
                        self.faults += 1
                        client.sendall(data[: self.after - sent])
                        break
                    if self.mode == "corrupt":
                        self.faults += 1
                        i = self.after - sent
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
