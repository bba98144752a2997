"""packaged.read_batches: each format against datasets' packaged builders on the same files."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cove.datasets import ClassLabel, Features, Value
from cove.datasets.packaged import infer_kind, read_batches
from tests.datasets.load_oracle import oracle_load, plain


def read(kind: str, path, **kwargs) -> pa.Table:
    with open(path, "rb") as f:
        batches = list(read_batches(kind, f, name=str(path), **kwargs))
    return pa.Table.from_batches(batches)


def assert_parity(kind: str, path, tmp_path, **kwargs) -> pa.Table:
    """Same rows and features as datasets.load_dataset(kind, data_files=path)."""
    ours = read(kind, path, **kwargs)
    theirs = oracle_load(kind, data_files=str(path), split="train", cache_dir=tmp_path / "hf",
                         **kwargs)
    assert ours.to_pylist() == theirs.to_list()
    assert plain(Features.from_arrow_schema(ours.schema).to_dict()) == plain(
        theirs.features.to_dict())
    return ours


CSV = "id,text,score,flag,day\n1,hello,0.5,True,2024-01-02\n2,\"a, quoted\nline\",1.5,False,2024-02-03\n"


def test_csv_parity(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(CSV)
    table = assert_parity("csv", path, tmp_path)
    assert table.schema.field("text").type == pa.string()  # Cove's choice (see load_oracle)
    assert table.column("day").to_pylist() == ["2024-01-02", "2024-02-03"]  # dates stay text


@pytest.mark.parametrize("kwargs", [
    {"sep": ";"}, {"delimiter": ";"},
    {"sep": ";", "column_names": ["x", "y"], "skiprows": 1},
    {"sep": ";", "header": None, "names": ["x", "y"]},
])
def test_csv_options_parity(tmp_path, kwargs):
    path = tmp_path / "semi.csv"
    path.write_text("a;b\n1;'q;x'\n2;z\n")
    assert_parity("csv", path, tmp_path, quotechar="'", **kwargs)


def test_csv_empty_column_and_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("name,empty\ncafé,\nnaïve,\n".encode("latin-1"))
    assert_parity("csv", path, tmp_path, encoding="latin-1")


def test_csv_streams_blocks_with_first_block_types(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("n,s\n" + "".join(f"{i},row{i}\n" for i in range(3000)))
    with open(path, "rb") as f:
        batches = list(read_batches("csv", f, name="big.csv", block_size=4096))
    assert len(batches) > 5
    table = pa.Table.from_batches(batches)
    assert table.column("n").to_pylist() == list(range(3000))


def test_csv_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,x\n2,\"two\nlines\"\n3,y,extra\n")
    with pytest.raises(ValueError, match=r"bad\.csv at line 5: expected 2 fields, got 3"):
        read("csv", path)


def test_csv_type_change_after_first_block_is_explained(tmp_path):
    path = tmp_path / "drift.csv"
    path.write_text("n\n" + "1\n" * 2000 + "oops\n")
    with pytest.raises(ValueError, match="pass features="):
        read("csv", path, block_size=1024)


def test_csv_features_cast_and_classlabel(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("text,label,n\nx,pos,1\ny,neg,2\n")
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"]),
                         "n": Value("float32")})
    table = read("csv", path, features=features)
    assert table.to_pydict() == {"text": ["x", "y"], "label": [1, 0], "n": [1.0, 2.0]}
    assert table.schema.field("n").type == pa.float32()
    theirs = oracle_load("csv", data_files=str(path), split="train", features=features_hf(),
                         cache_dir=tmp_path / "hf")
    assert theirs.to_list() == table.to_pylist()


def features_hf():
    from tests.datasets.load_oracle import oracle

    hf = oracle()
    return hf.Features({"text": hf.Value("string"), "label": hf.ClassLabel(names=["neg", "pos"]),
                        "n": hf.Value("float32")})


def test_unknown_reader_option_and_kind(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a\n1\n")
    with pytest.raises(TypeError, match="Unknown csv reader option.*bogus"):
        read("csv", path, bogus=1)
    with pytest.raises(ValueError, match="Unknown data file format 'xml'.*csv, json"):
        read("xml", path)


ROWS = [{"a": 1, "b": "x", "c": [1, 2], "d": {"e": True}},
        {"a": 2, "b": None, "c": [], "d": {"e": False}}]


def test_json_lines_parity(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert_parity("json", path, tmp_path)


def test_json_lines_in_blocks(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"i": i, "f": i / 2}) + "\n" for i in range(500)))
    with open(path, "rb") as f:
        batches = list(read_batches("json", f, name="many.jsonl", chunksize=1000))
    assert len(batches) > 5
    assert pa.Table.from_batches(batches).column("i").to_pylist() == list(range(500))


def test_json_array_and_field_parity(tmp_path):
    array = tmp_path / "array.json"
    array.write_text(json.dumps(ROWS, indent=2))
    assert_parity("json", array, tmp_path)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"version": 1, "data": ROWS}))
    assert_parity("json", nested, tmp_path, field="data")


def test_json_array_is_read_element_by_element(tmp_path, monkeypatch):
    import cove.datasets.packaged as packaged

    monkeypatch.setattr(packaged, "ARRAY_ROWS", 7)
    path = tmp_path / "long.json"
    path.write_text(json.dumps([{"i": i, "s": "x" * (i % 5)} for i in range(50)]))
    with open(path, "rb") as f:
        batches = list(read_batches("json", f, name="long.json"))
    assert [b.num_rows for b in batches] == [7] * 7 + [1]
    assert pa.Table.from_batches(batches).column("i").to_pylist() == list(range(50))


def test_json_malformed_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3,\n{"a": 4}\n')
    with pytest.raises(ValueError, match=r"Malformed JSON in .*bad\.jsonl at line 3"):
        read("json", path)
    array = tmp_path / "bad.json"
    array.write_text('[\n{"a": 1},\n{"a": 2 "b"}\n]')
    with pytest.raises(ValueError, match=r"Malformed JSON in .*bad\.json at line 3"):
        read("json", array)
    with pytest.raises(ValueError, match="has no field 'rows'"):
        read("json", _write(tmp_path / "obj.json", '{"data": []}'), field="rows")


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("kwargs", [
    {}, {"keep_linebreaks": True}, {"sample_by": "paragraph"}, {"sample_by": "document"},
])
def test_text_parity(tmp_path, kwargs):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"first line\nsecond\r\n\nfourth after blank\n\n\nlast without newline")
    assert_parity("text", path, tmp_path, **kwargs)


def test_text_in_chunks(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    with open(path, "rb") as f:
        batches = list(read_batches("text", f, name="many.txt", chunksize=500))
    assert len(batches) > 5
    assert pa.Table.from_batches(batches).column("text").to_pylist() == [
        f"line {i}" for i in range(1000)]


def test_parquet_parity_and_options(tmp_path):
    path = tmp_path / "data.parquet"
    table = pa.table({"a": list(range(10)), "b": [str(i) for i in range(10)]})
    pq.write_table(table, path, row_group_size=3)
    assert_parity("parquet", path, tmp_path)
    assert read("parquet", path, columns=["b"]).column_names == ["b"]
    filtered = read("parquet", path, filters=[("a", ">=", 7)])
    assert filtered.column("a").to_pylist() == [7, 8, 9]
    with open(path, "rb") as f:
        assert len(list(read_batches("parquet", f, name="p", batch_size=4))) >= 3


def test_arrow_stream_and_file(tmp_path):
    table = pa.table({"a": [1, 2], "b": [[1.0], [2.0, 3.0]]})
    stream = tmp_path / "s.arrow"
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    assert_parity("arrow", stream, tmp_path)
    filed = tmp_path / "f.arrow"
    with pa.OSFile(str(filed), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    assert read("arrow", filed).equals(table)
    with pytest.raises(ValueError, match="not an Arrow IPC"):
        read("arrow", _write(tmp_path / "no.arrow", "not arrow at all"))


def test_infer_kind():
    assert infer_kind("a/b/train.csv") == "csv"
    assert infer_kind("x.TSV") == "csv"
    assert infer_kind("x.jsonl") == infer_kind("x.json") == "json"
    assert infer_kind("https://h/r/resolve/main/d.parquet") == "parquet"
    assert infer_kind("notes.md") is None


def test_reads_from_any_binary_file_object():
    data = io.BytesIO(b"a,b\n1,2\n")
    data.read(0)
    batches = list(read_batches("csv", data, name="memory"))
    assert pa.Table.from_batches(batches).to_pydict() == {"a": [1], "b": [2]}


def test_json_classlabel_strings_with_features(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"t": "x", "l": "pos"}\n{"t": "y", "l": "neg"}\n')
    features = Features({"t": Value("string"), "l": ClassLabel(names=["neg", "pos"])})
    assert read("json", path, features=features).to_pydict() == {"t": ["x", "y"], "l": [1, 0]}


@pytest.mark.parametrize("kind", ["csv", "json", "text"])
def test_memory_stays_bounded_on_a_big_file(tmp_path, kind):
    """A 16 MB file read in 1 MB blocks never holds more than a few blocks in Arrow memory."""
    path = tmp_path / f"big.{kind}"
    line = {"csv": "12345,some text here to fill the line up\n",
            "json": '{"n": 12345, "s": "some text here to fill"}\n',
            "text": "some text here to fill the line up nicely\n"}[kind]
    header = "n,s\n" if kind == "csv" else ""
    with open(path, "w") as f:
        f.write(header + line * (16 * 1024 * 1024 // len(line)))
    option = {"csv": "block_size", "json": "chunksize", "text": "chunksize"}[kind]
    peak = rows = 0
    with open(path, "rb") as f:
        for batch in read_batches(kind, f, name=str(path), **{option: 1 << 20}):
            rows += batch.num_rows
            peak = max(peak, pa.total_allocated_bytes())
            del batch
    assert rows == 16 * 1024 * 1024 // len(line)
    assert peak < 8 * 1024 * 1024


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_compressed_files_parity(tmp_path, suffix):
    import bz2
    import gzip
    import lzma

    compress = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[suffix]
    csv_path = tmp_path / f"data.csv{suffix}"
    csv_path.write_bytes(compress(CSV.encode()))
    assert infer_kind(str(csv_path)) == "csv"
    assert_parity("csv", csv_path, tmp_path)
    jsonl = tmp_path / f"rows.jsonl{suffix}"
    jsonl.write_bytes(compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    assert_parity("json", jsonl, tmp_path)
    bad = tmp_path / f"bad.csv{suffix}"
    bad.write_bytes(b"definitely not compressed data" * 3)
    with pytest.raises(ValueError, match="Couldn't decompress .*bad.csv"):
        read("csv", bad)


def test_json_type_change_after_first_block_is_explained(tmp_path):
    path = tmp_path / "late.jsonl"
    path.write_text("".join(json.dumps({"a": i, "b": None}) + "\n" for i in range(100))
                    + json.dumps({"a": 100, "b": "x"}) + "\n")
    with pytest.raises(ValueError, match="late.jsonl from line .*pass features="):
        read("json", path, chunksize=500)
    features = Features({"a": Value("int64"), "b": Value("string")})
    assert read("json", path, chunksize=500, features=features).column("b").to_pylist()[-2:] == [
        None, "x"]
