"""Features, DatasetInfo and the Arrow writer against Hugging Face `datasets` 5 (the oracle)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

import datasets as hf
from cove.datasets import (
    Array2D,
    ClassLabel,
    DatasetInfo,
    Features,
    LargeList,
    List,
    Sequence,
    SplitInfo,
    Value,
)
from cove.datasets.writer import read_arrow_file, write_arrow


def both(build):
    """The same features built with cove's and with datasets' classes."""
    ours = build(Value=Value, ClassLabel=ClassLabel, Sequence=Sequence, List=List,
                 LargeList=LargeList, Array2D=Array2D, Features=Features)
    theirs = build(Value=hf.Value, ClassLabel=hf.ClassLabel, Sequence=hf.Sequence, List=hf.List,
                   LargeList=hf.LargeList, Array2D=hf.Array2D, Features=hf.Features)
    return ours, theirs


def rich(Value, ClassLabel, Sequence, List, LargeList, Array2D, Features):  # noqa: N803
    return Features({
        "id": Value("int32"),
        "text": Value("string"),
        "score": Value("float"),
        "big": Value("large_string"),
        "when": Value("timestamp[us, tz=UTC]"),
        "label": ClassLabel(names=["neg", "pos"]),
        "tokens": Sequence(Value("string")),
        "spans": Sequence({"start": Value("int64"), "end": Value("int64")}),
        "vec": List(Value("float32"), length=3),
        "long": LargeList(Value("int8")),
        "grid": Array2D((2, 2), "float32"),
        "meta": {"ok": Value("bool"), "tags": List(Value("string"))},
    })


def test_to_dict_is_datasets_json():
    ours, theirs = both(rich)
    assert json.dumps(ours.to_dict()) == json.dumps(theirs.to_dict())
    assert repr(ours) == repr(theirs)


def test_from_dict_round_trip_and_old_sequence_form():
    ours, theirs = both(rich)
    assert Features.from_dict(theirs.to_dict()) == ours
    old = {"s": {"feature": {"dtype": "int64", "_type": "Value"}, "length": -1,
                 "_type": "Sequence"},
           "d": {"feature": {"x": {"dtype": "int32", "_type": "Value"}}, "_type": "Sequence"}}
    assert Features.from_dict(old).to_dict() == hf.Features.from_dict(old).to_dict()


def test_arrow_schema_and_metadata_match():
    ours, theirs = both(rich)
    # Array2D is an extension type in datasets; its storage is the plain nested list we use
    plain = [f for f in theirs.arrow_schema if f.name != "grid"]
    assert [f for f in ours.arrow_schema if f.name != "grid"] == plain
    assert ours.arrow_schema.field("grid").type == theirs.type["grid"].type.storage_type
    assert ours.arrow_schema.metadata == theirs.arrow_schema.metadata


def test_from_arrow_schema_reads_metadata_or_infers():
    ours, theirs = both(rich)
    assert Features.from_arrow_schema(theirs.arrow_schema) == ours
    schema = pa.schema([
        ("a", pa.int16()), ("b", pa.float64()), ("c", pa.list_(pa.string())),
        ("d", pa.struct({"x": pa.large_list(pa.float32())})), ("e", pa.date32()),
        ("f", pa.dictionary(pa.int32(), pa.string())), ("g", pa.list_(pa.int8(), 4)),
        ("h", pa.binary()), ("i", pa.float16()),
    ])
    assert Features.from_arrow_schema(schema).to_dict() == \
        hf.Features.from_arrow_schema(schema).to_dict()


def test_class_label():
    ours, theirs = ClassLabel(names=["a", "b", "c"]), hf.ClassLabel(names=["a", "b", "c"])
    assert ours.str2int(["c", "a"]) == theirs.str2int(["c", "a"]) == [2, 0]
    assert ours.int2str(1) == theirs.int2str(1) == "b"
    assert ours.num_classes == 3
    assert ClassLabel(num_classes=2).names == hf.ClassLabel(num_classes=2).names
    with pytest.raises(ValueError, match="Invalid string class label 'z'"):
        ours.str2int("z")
    with pytest.raises(ValueError, match="out of range"):
        ours.encode_example(7)
    with pytest.raises(ValueError, match="unique"):
        ClassLabel(names=["a", "a"])


def test_class_label_names_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("cat\ndog\n\nbird\n")
    assert ClassLabel(names_file=str(path)).names == hf.ClassLabel(names_file=str(path)).names


def test_encode_example_and_batch():
    ours, theirs = both(rich)
    row = {"id": 3, "text": "hi", "score": 1, "big": "x", "when": None, "label": "pos",
           "tokens": ["a", "b"], "spans": {"start": [0], "end": [2]}, "vec": [1, 2, 3],
           "long": [1], "grid": [[1, 2], [3, 4]], "meta": {"ok": True, "tags": ["t"]}}
    assert ours.encode_example(row) == theirs.encode_example(row)
    batch = {"label": ["neg", "pos", 1], "tokens": [["x"], [], ["y", "z"]]}
    sub_ours = Features({k: ours[k] for k in batch})
    sub_theirs = hf.Features({k: theirs[k] for k in batch})
    assert sub_ours.encode_batch(batch) == sub_theirs.encode_batch(batch)


def test_flatten_matches():
    ours, theirs = both(rich)
    assert list(ours.flatten()) == list(theirs.flatten())
    assert repr(ours.flatten()) == repr(theirs.flatten())


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown Value dtype 'integer'"):
        Value("integer")
    with pytest.raises(ValueError, match="Unsupported feature type 'Audio'"):
        Features.from_dict({"a": {"_type": "Audio"}})


def test_dataset_info_json_both_ways(tmp_path):
    theirs = hf.DatasetInfo(
        description="d", features=hf.Features({"a": hf.Value("int32")}),
        splits=[{"name": "train", "num_bytes": 10, "num_examples": 2, "dataset_name": "x"}],
        builder_name="csv", dataset_name="x", config_name="default", version="0.0.0",
        download_size=5, dataset_size=10,
    )
    (tmp_path / "hf").mkdir()
    theirs.write_to_directory(str(tmp_path / "hf"))
    ours = DatasetInfo.from_directory(tmp_path / "hf")
    assert ours.features == Features({"a": Value("int32")})
    assert ours.splits == {"train": SplitInfo("train", 10, 2, "x")}
    assert ours.version == "0.0.0"
    assert json.dumps(ours.to_dict()) == (tmp_path / "hf" / "dataset_info.json").read_text()
    (tmp_path / "cove").mkdir()
    ours.write_to_directory(tmp_path / "cove")
    back = hf.DatasetInfo.from_directory(str(tmp_path / "cove"))
    assert back.features == theirs.features
    assert back.splits["train"].num_examples == 2
    assert back.dataset_size == 10


def test_write_arrow_is_readable_by_datasets(tmp_path):
    features = Features({"label": ClassLabel(names=["a", "b"]), "x": List(Value("int64"))})
    path = str(tmp_path / "t.arrow")
    batches = [{"label": [0, 1], "x": [[1], [2, 3]]}, {"label": [1], "x": [[]]}]
    rows, nbytes = write_arrow(batches, path, features)
    assert rows == 3 and nbytes > 0
    table = read_arrow_file(path)
    assert Features.from_arrow_schema(table.schema) == features
    theirs = hf.Dataset.from_file(path)
    assert theirs.features["label"].names == ["a", "b"]
    assert theirs["x"][:] == [[1], [2, 3], []]
    assert not list(tmp_path.glob(".tmp-*"))
