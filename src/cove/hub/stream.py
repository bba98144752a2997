"""File bodies over http.client: one kept-alive connection per thread and host.

Downloads spend their time here. httpx's pool serialises worker threads on one lock and costs
several times more CPU per byte, so file bodies take this lean path; the API calls keep httpx.
Proxies from the environment are honoured (a CONNECT tunnel for https, absolute URLs for http).
"""

from __future__ import annotations

import http.client
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

import certifi
import httpx

TIMEOUT = 30.0
# What a dropped or broken connection raises while streaming: the caller resumes on these.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)

_local = threading.local()


def _connection(scheme: str, host: str, port: int) -> tuple[http.client.HTTPConnection, bool]:
    """(connection, whether requests must carry the absolute URL: a plain-http proxy)."""
    conns = _local.__dict__.setdefault("conns", {})
    key = (scheme, host, port)
    if key in conns:
        return conns[key]
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(scheme)
    target_host, target_port = host, port
    if proxy:
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        target_host, target_port = p.hostname, p.port or 80
    if scheme == "https":
        context = ssl.create_default_context(cafile=certifi.where())
        conn = http.client.HTTPSConnection(target_host, target_port, timeout=TIMEOUT,
                                           context=context)
        if proxy:
            conn.set_tunnel(host, port)
    else:
        conn = http.client.HTTPConnection(target_host, target_port, timeout=TIMEOUT)
    conns[key] = (conn, bool(proxy) and scheme == "http")
    return conns[key]


def _drop(scheme: str, host: str, port: int) -> None:
    conn, _ = _local.__dict__.get("conns", {}).pop((scheme, host, port), (None, None))
    if conn is not None:
        conn.close()


@contextmanager
def get(url: str, headers: dict[str, str], max_redirects: int = 5
        ) -> Iterator[http.client.HTTPResponse]:
    """GET `url`, following redirects (Authorization is dropped when the host changes)."""
    headers = dict(headers)
    origin = urlsplit(url).netloc
    for _ in range(max_redirects + 1):
        parts = urlsplit(url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname or ""
        if parts.netloc != origin:
            headers.pop("authorization", None)
        conn, absolute = _connection(scheme, host, port)
        target = url if absolute else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
        except TRANSPORT_ERRORS:
            _drop(scheme, host, port)
            raise
        location = response.getheader("location")
        if response.status in (301, 302, 303, 307, 308) and location:
            response.read()
            url = urljoin(url, location)
            continue
        try:
            yield response
        except BaseException:
            _drop(scheme, host, port)  # a half-read body leaves the connection unusable
            raise
        if not response.isclosed():
            _drop(scheme, host, port)
        return
    raise httpx.TooManyRedirects(f"More than {max_redirects} redirects for {url}")


def as_httpx_response(url: str, response: http.client.HTTPResponse) -> httpx.Response:
    """An error response in httpx's form, for the shared error mapping."""
    return httpx.Response(response.status, headers=response.getheaders(),
                          content=response.read(), request=httpx.Request("GET", url))
