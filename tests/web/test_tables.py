"""The dataset viewer's reading side, without a browser: splits from names, pages of each format."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from cove.server.gitrepo import Entry
from cove.server.web import tables

ROWS = 1000
TABLE = pa.table({"n": list(range(ROWS)), "word": [f"w{i}" for i in range(ROWS)]})


def _arrow(stream: bool) -> bytes:
    out = io.BytesIO()
    opener = ipc.new_stream if stream else ipc.new_file
    with opener(out, TABLE.schema) as writer:
        for batch in TABLE.to_batches(max_chunksize=70):
            writer.write_batch(batch)
    return out.getvalue()


def _parquet() -> bytes:
    out = io.BytesIO()
    pq.write_table(TABLE, out, row_group_size=128)
    return out.getvalue()


FILES = {
    "parquet": _parquet(),
    "csv": b"n,word\n" + b"".join(f"{i},w{i}\n".encode() for i in range(ROWS)),
    "tsv": b"n\tword\n" + b"".join(f"{i}\tw{i}\n".encode() for i in range(ROWS)),
    "json": b"".join(json.dumps({"n": i, "word": f"w{i}"}).encode() + b"\n"
                     for i in range(ROWS)),
    "arrow-stream": _arrow(stream=True),
    "arrow-file": _arrow(stream=False),
}


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("offset", [0, 250, 900])
def test_a_page_of_each_format(name, offset):
    page = tables.read_page(io.BytesIO(FILES[name]), name.split("-")[0], offset)
    expected = min(tables.PAGE_ROWS, ROWS - offset)
    assert [r[0] for r in page.rows] == [str(i) for i in range(offset, offset + expected)]
    assert page.columns[0] == ("n", "int64") and page.columns[1][0] == "word"
    assert page.has_more == (offset + expected < ROWS)
    if name == "parquet":
        assert page.total == ROWS


def test_splits_from_file_names():
    def entry(path: str) -> Entry:
        return Entry(path, "file", "0" * 40, 1)

    found = tables.splits([entry(p) for p in (
        "README.md", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
        "data/validation-00000.parquet", "test.csv", "eval/x.jsonl", "extra.jsonl", ".hidden.csv",
    )])
    assert {k: [e.path for e in v] for k, v in found.items()} == {
        "train": ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                  "extra.jsonl"],
        "validation": ["data/validation-00000.parquet"],
        "test": ["test.csv", "eval/x.jsonl"],
    }
    assert list(found) == ["train", "validation", "test"]
