"""Remote files by HTTP byte ranges: exact bytes through faults, few requests, clear errors."""

from __future__ import annotations

import io
import os
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub as hh
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from cove.datasets import IterableDataset
from cove.datasets.remote import HTTPFile, open_file
from cove.hub.errors import HubHTTPError
from tests.hub.proxy import FaultyProxy
from tests.server.conftest import seeded_server

DATA = os.urandom(3 * 1024 * 1024 + 123)
KIB = 1024


class RangeServer:
    """Serves named byte strings with HEAD and single byte ranges; records each GET's range.

    `ignore_range` answers every GET with the whole body (200); `fail_next` answers that many
    GETs with 503 before behaving.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.ranges: list[str | None] = []
        self.ignore_range = False
        self.fail_next = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes | None:
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                return data

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
                data = self._body()
                if data is not None:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("ETag", '"v1"')
                    self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                data = self._body()
                if data is None:
                    return
                rng = self.headers.get("range")
                server.ranges.append(rng)
                if server.fail_next:
                    server.fail_next -= 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if m is None or server.ignore_range:
                    self.send_response(200)
                    body = data
                else:
                    start = int(m.group(1))
                    end = min(int(m.group(2) or len(data) - 1), len(data) - 1)
                    body = data[start:end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # cut connections are expected
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}/{name}"


def _parquet_bytes() -> bytes:
    table = pa.table({"id": list(range(20000)), "text": [f"row {i}" for i in range(20000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=5000)
    return sink.getvalue()


PARQUET = _parquet_bytes()


@pytest.fixture(scope="module")
def srv():
    server = RangeServer({"data.bin": DATA, "t.parquet": PARQUET, "empty.bin": b""})
    yield server
    server.httpd.shutdown()


@pytest.fixture(autouse=True)
def _reset(srv):
    srv.ranges.clear()
    srv.ignore_range = False
    srv.fail_next = 0


def test_random_reads_are_exact(srv):
    rnd = random.Random(0)
    with open_file(srv.url("data.bin"), token=False) as f:
        assert f.seekable() and f.readable() and not f.writable()
        assert f.raw.size == len(DATA)
        for _ in range(200):
            pos = rnd.randrange(len(DATA) + 10)
            n = rnd.choice([0, 1, 7, 4096, 300 * KIB, 2 * 1024 * KIB])
            f.seek(pos)
            expected = DATA[pos:pos + n]
            assert f.read(n) == expected
            assert f.tell() == pos + len(expected)
        f.seek(-100, io.SEEK_END)
        assert f.read() == DATA[-100:]
        f.seek(10)
        f.seek(5, io.SEEK_CUR)
        assert f.read(3) == DATA[15:18]
        with pytest.raises(OSError, match="Negative seek"):
            f.seek(-1)
    with open_file(srv.url("empty.bin"), token=False) as f:
        assert f.read() == b""


def test_sequential_reads_use_the_read_ahead(srv):
    with open_file(srv.url("data.bin"), token=False, block_size=1024 * KIB) as f:
        got = b"".join(iter(lambda: f.read(8 * KIB), b""))
    assert got == DATA
    # 385 reads, 3 requests: the block doubles while the reads stay sequential.
    assert srv.ranges == [f"bytes=0-{1024 * KIB - 1}", f"bytes={1024 * KIB}-{3072 * KIB - 1}",
                          f"bytes={3072 * KIB}-{len(DATA) - 1}"]
    srv.ranges.clear()
    with open_file(srv.url("data.bin"), token=False, block_size=1024 * KIB) as f:
        f.seek(100)
        f.read(10)
        f.seek(2048 * KIB)  # a jump: back to the base block size
        assert f.read(10) == DATA[2048 * KIB:2048 * KIB + 10]
    assert srv.ranges[-1] == f"bytes={2048 * KIB}-{3072 * KIB - 1}"


def test_parquet_reads_the_footer_then_row_groups(srv):
    with open_file(srv.url("t.parquet"), token=False, block_size=64 * KIB) as f:
        pf = pq.ParquetFile(f)
        assert pf.metadata.num_rows == 20000
        last = pf.read_row_group(3)
    assert last.column("id")[0].as_py() == 15000
    assert len(srv.ranges) < 20  # footer + one group: never the whole file by small pieces
    srv.ranges.clear()
    rows = list(IterableDataset._from_files([srv.url("t.parquet")], "parquet", token=False))
    assert rows == pq.read_table(io.BytesIO(PARQUET)).to_pylist()
    assert len(srv.ranges) <= 2  # the footer, then the rest in one read-ahead block


def test_cut_connection_resumes_at_the_right_offset(srv):
    proxy = FaultyProxy(srv.port, "cut", after=1536 * KIB + 17)
    try:
        with open_file(srv.url("data.bin", proxy.port), token=False,
                       block_size=1024 * KIB) as f:
            got = f.read()
    finally:
        proxy.close()
    assert proxy.faults == 1 and got == DATA
    starts = [int(r.split("=")[1].split("-")[0]) for r in srv.ranges]
    assert starts[0] == 0 and 0 < starts[1] <= 1536 * KIB  # resumed mid-file, not from 0


def test_server_errors_are_retried(srv, monkeypatch):
    monkeypatch.setattr("cove.datasets.remote._backoff", lambda attempt: None)
    srv.fail_next = 2
    with open_file(srv.url("data.bin"), token=False) as f:
        assert f.read(1000) == DATA[:1000]
    assert len(srv.ranges) == 3
    srv.fail_next = 100
    with open_file(srv.url("data.bin"), token=False) as f:
        with pytest.raises(OSError, match="failed after 5 retries"):
            f.read(10)


def test_server_ignoring_range_is_a_clear_error(srv):
    srv.ignore_range = True
    with open_file(srv.url("data.bin"), token=False, block_size=KIB) as f:
        with pytest.raises(OSError, match="does not support HTTP Range requests"):
            f.read(10)


def test_missing_files(srv, tmp_path):
    with pytest.raises(HubHTTPError, match="404"):
        HTTPFile(srv.url("nope.bin"), token=False)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        open_file(tmp_path / "nope.csv")
    (tmp_path / "a.bin").write_bytes(b"abc")
    with open_file(f"file://{tmp_path / 'a.bin'}") as f:
        assert f.read() == b"abc"


def test_streaming_from_a_cove_hub(tmp_path_factory):
    """A private dataset repo on a live server: parquet (LFS) and CSV read through URLs."""
    live = seeded_server(tmp_path_factory.mktemp("hub-stream"))
    try:
        token = live.accounts.alice_write
        api = hh.HfApi(endpoint=live.url, token=token)
        api.create_repo("alice/stream", repo_type="dataset", private=True)
        folder = tmp_path_factory.mktemp("stream-src")
        table = pa.table({"id": list(range(3000)), "text": [f"t{i}" for i in range(3000)]})
        pq.write_table(table, folder / "train.parquet", row_group_size=700)
        pa_csv.write_csv(table.slice(0, 500), folder / "test.csv")
        api.upload_folder(repo_id="alice/stream", repo_type="dataset", folder_path=folder)
        lfs = {f.path: f.lfs is not None
               for f in api.list_repo_tree("alice/stream", repo_type="dataset")}
        assert lfs["train.parquet"] and not lfs["test.csv"]  # both kinds of storage
        base = f"{live.url}/datasets/alice/stream/resolve/main"
        train = IterableDataset._from_files([f"{base}/train.parquet"], "parquet", token=token)
        assert list(train) == table.to_pylist()
        test = IterableDataset._from_files([f"{base}/test.csv"], "csv", token=token)
        assert list(test.take(3)) == table.slice(0, 3).to_pylist()
        with pytest.raises(HubHTTPError):  # private: no token, no data
            list(IterableDataset._from_files([f"{base}/test.csv"], "csv", token=False))
    finally:
        live.stop()
