"""load_dataset on local files and folders, against datasets.load_dataset on the same data."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cove.datasets import (
    DataFilesNotFoundError,
    DatasetNotFoundError,
    Features,
    Value,
    get_dataset_config_names,
    get_dataset_split_names,
    load_dataset,
    load_dataset_builder,
)
from cove.datasets.load import NonMatchingSplitsSizesError
from tests.datasets.load_oracle import oracle_load, plain


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COVE_DATASETS_CACHE", str(tmp_path / "cove-cache"))
    return tmp_path / "cove-cache"


def same(ours, theirs) -> None:
    """Same splits, rows and features (string vs large_string aside)."""
    if hasattr(theirs, "keys"):
        assert list(ours) == list(theirs)
        for split in theirs:
            same(ours[split], theirs[split])
        return
    assert ours.to_list() == theirs.to_list()
    assert plain(ours.features.to_dict()) == plain(theirs.features.to_dict())
    assert len(ours) == len(theirs)


def write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def csv_rows(start: int, n: int) -> str:
    return "idx,text,label\n" + "".join(f"{i},row {i},{i % 3}\n" for i in range(start, start + n))


@pytest.fixture
def csv_files(tmp_path):
    return {"train": write(tmp_path / "src" / "train.csv", csv_rows(0, 40)),
            "test": write(tmp_path / "src" / "test.csv", csv_rows(100, 12))}


def test_packaged_csv_dict_parity(tmp_path, csv_files):
    ours = load_dataset("csv", data_files=csv_files)
    same(ours, oracle_load("csv", data_files=csv_files, cache_dir=tmp_path / "hf"))
    assert list(ours) == ["train", "test"]
    assert ours["train"].split == "train"


@pytest.mark.parametrize("split", ["train", "test", "train+test", "train[:10%]", "test[5:20]",
                                   "train[-7:]", "train[10%:20%]", "train[:25%]+test[-3:]"])
def test_split_strings_parity(tmp_path, csv_files, split):
    ours = load_dataset("csv", data_files=csv_files, split=split)
    same(ours, oracle_load("csv", data_files=csv_files, split=split, cache_dir=tmp_path / "hf"))


def test_unknown_split_lists_available(csv_files):
    with pytest.raises(ValueError, match=r"Unknown split \"dev\". Should be one of \['train', "
                                         r"'test'\]"):
        load_dataset("csv", data_files=csv_files, split="dev")


def test_json_parquet_text_parity(tmp_path):
    rows = [{"a": i, "b": [i, i + 1], "c": {"d": str(i)}} for i in range(5)]
    jsonl = write(tmp_path / "d" / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    same(load_dataset("json", data_files=jsonl, split="train"),
         oracle_load("json", data_files=jsonl, split="train", cache_dir=tmp_path / "hf"))
    parquet = str(tmp_path / "d" / "t.parquet")
    pq.write_table(pa.table({"x": [1.5, 2.5], "y": ["a", None]}), parquet)
    same(load_dataset("parquet", data_files={"validation": parquet}),
         oracle_load("parquet", data_files={"validation": parquet}, cache_dir=tmp_path / "hf"))
    txt = write(tmp_path / "d" / "a.txt", "one\ntwo\n\nthree\n")
    for kwargs in ({}, {"sample_by": "paragraph"}, {"keep_linebreaks": True}):
        same(load_dataset("text", data_files=[txt, txt], split="train", **kwargs),
             oracle_load("text", data_files=[txt, txt], split="train",
                         cache_dir=tmp_path / "hf", **kwargs))


def test_data_dir_and_globs(tmp_path):
    for i in range(3):
        write(tmp_path / "root" / "shards" / f"part-{i}.csv", csv_rows(i * 10, 10))
    write(tmp_path / "root" / "shards" / "notes.md", "not data")
    ours = load_dataset("csv", data_dir=str(tmp_path / "root"), data_files="shards/*.csv",
                        split="train")
    assert ours["idx"] == list(range(30))
    theirs = oracle_load("csv", data_dir=str(tmp_path / "root"), data_files="shards/*.csv",
                         split="train", cache_dir=tmp_path / "hf")
    same(ours, theirs)


FOLDERS = {
    "split files": {"train.csv": csv_rows(0, 5), "test.csv": csv_rows(5, 3),
                    "README.md": "# just a card\n"},
    "data folder": {"data/train.jsonl": '{"a": 1}\n{"a": 2}\n', "data/validation.jsonl":
                    '{"a": 3}\n', "data/test.jsonl": '{"a": 4}\n'},
    "one file": {"all.csv": csv_rows(0, 4)},
    "split folders": {"train/a.csv": csv_rows(0, 2), "train/b.csv": csv_rows(2, 2),
                      "dev/c.csv": csv_rows(4, 2)},
    "tsv": {"train.tsv": "a\tb\n1\tx\n2\ty\n"},
    "mixed formats": {"train.csv": csv_rows(0, 3), "test.csv": csv_rows(3, 2),
                      "extra.json": '{"a": 1}\n'},
}


@pytest.mark.parametrize("layout", sorted(FOLDERS))
def test_local_folder_parity(tmp_path, layout):
    root = tmp_path / layout.replace(" ", "_")
    for name, text in FOLDERS[layout].items():
        write(root / name, text)
    ours = load_dataset(str(root))
    same(ours, oracle_load(str(root), cache_dir=tmp_path / "hf"))
    assert get_dataset_split_names(str(root)) == list(ours)


CARD = """---
configs:
- config_name: semi
  data_files:
  - split: train
    path: semi/train-*.csv
  - split: test
    path: semi/test.csv
  sep: ";"
- config_name: plain
  default: true
  data_files: plain/*.csv
---
# A card with two configs
"""


@pytest.fixture
def configured(tmp_path):
    root = tmp_path / "configured"
    write(root / "README.md", CARD)
    write(root / "semi" / "train-0.csv", "a;b\n1;x\n2;y\n")
    write(root / "semi" / "train-1.csv", "a;b\n3;z\n")
    write(root / "semi" / "test.csv", "a;b\n4;w\n")
    write(root / "plain" / "all.csv", "q,r\n1,2\n")
    return str(root)


def test_readme_configs_parity(tmp_path, configured):
    for name in (None, "semi", "plain"):
        same(load_dataset(configured, name), oracle_load(configured, name,
                                                         cache_dir=tmp_path / "hf"))
    hf_names = pytest.importorskip("datasets").get_dataset_config_names(configured)
    assert get_dataset_config_names(configured) == hf_names == ["semi", "plain"]
    assert get_dataset_split_names(configured, "semi") == ["train", "test"]


def test_unknown_config_lists_available(configured):
    with pytest.raises(ValueError, match=r"'nope' not found. Available: \['semi', 'plain'\]"):
        load_dataset(configured, "nope")


def test_card_features_are_used(tmp_path):
    root = tmp_path / "typed"
    write(root / "README.md", "---\ndataset_info:\n  features:\n  - name: a\n    dtype: float32\n"
          "  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': neg\n"
          "          '1': pos\n---\n")
    write(root / "train.csv", "a,label\n1,pos\n2,neg\n")
    ds = load_dataset(str(root), split="train")
    assert ds.features["a"] == Value("float32")
    assert ds["label"] == [1, 0]
    same(ds, oracle_load(str(root), split="train", cache_dir=tmp_path / "hf"))


def test_user_features(tmp_path, csv_files):
    features = Features({"idx": Value("int32"), "text": Value("string"),
                         "label": Value("float64")})
    ds = load_dataset("csv", data_files=csv_files["test"], split="train", features=features)
    assert ds.features == features
    assert ds[0] == {"idx": 100, "text": "row 100", "label": 1.0}


def test_cache_layout_reuse_and_refresh(tmp_path, cache, csv_files):
    ds = load_dataset("csv", data_files=csv_files, split="train")
    (arrow,) = [f["filename"] for f in ds.cache_files]
    assert arrow.startswith(str(cache / "csv" / "default" / "0.0.0"))
    assert os.path.basename(arrow) == "csv-train.arrow"
    folder = os.path.dirname(arrow)
    info = json.loads(open(os.path.join(folder, "dataset_info.json")).read())
    assert info["splits"]["train"]["num_examples"] == 40
    mtime = os.stat(arrow).st_mtime_ns
    again = load_dataset("csv", data_files=csv_files, split="train")
    assert again.cache_files[0]["filename"] == arrow and os.stat(arrow).st_mtime_ns == mtime
    time.sleep(0.01)
    write(csv_files["train"], csv_rows(500, 2))  # the data changed: a new cache folder
    fresh = load_dataset("csv", data_files=csv_files, split="train")
    assert fresh["idx"] == [500, 501]
    assert os.path.dirname(fresh.cache_files[0]["filename"]) != folder
    forced = load_dataset("csv", data_files=csv_files, split="train",
                          download_mode="force_redownload")
    assert forced["idx"] == [500, 501]
    assert not [n for n in os.listdir(os.path.dirname(fresh.cache_files[0]["filename"]))
                if n.startswith(".tmp")]


def test_cache_dir_argument(tmp_path, csv_files):
    ds = load_dataset("csv", data_files=csv_files, split="test", cache_dir=str(tmp_path / "own"))
    assert ds.cache_files[0]["filename"].startswith(str(tmp_path / "own"))


def test_builder_info_and_prepare(csv_files):
    builder = load_dataset_builder("csv", data_files=csv_files)
    assert list(builder.info.features) == ["idx", "text", "label"]  # from the first batch
    assert not os.path.exists(builder.cache_dir + "/dataset_info.json")
    builder.download_and_prepare()
    assert builder.info.splits["test"].num_examples == 12
    ds = builder.as_dataset(split="test")
    assert ds["idx"][:2] == [100, 101]
    assert set(builder.as_dataset()) == {"train", "test"}


def test_num_proc_prepares_splits(csv_files):
    dd = load_dataset("csv", data_files=csv_files, num_proc=2)
    assert {s: len(d) for s, d in dd.items()} == {"train": 40, "test": 12}


def test_streaming_local(csv_files):
    ids = load_dataset("csv", data_files=csv_files, split="test", streaming=True)
    assert [row["idx"] for row in ids] == list(range(100, 112))
    both = load_dataset("csv", data_files=csv_files, streaming=True)
    assert sorted(both) == ["test", "train"]
    assert next(iter(both["train"]))["text"] == "row 0"
    with pytest.raises(ValueError, match="Streaming reads whole splits"):
        load_dataset("csv", data_files=csv_files, split="train[:5]", streaming=True)


def test_errors(tmp_path, csv_files):
    with pytest.raises(DataFilesNotFoundError, match="Unable to find '.*missing.csv'"):
        load_dataset("csv", data_files=str(tmp_path / "missing.csv"))
    with pytest.raises(DataFilesNotFoundError, match=r"'\*\.csv'"):
        load_dataset("csv", data_files="*.csv", data_dir=str(tmp_path / "src" / "nothing"))
    with pytest.raises(ValueError, match="At least one data file"):
        load_dataset("json")
    with pytest.raises(DatasetNotFoundError, match="Couldn't find './no/such/folder'"):
        load_dataset("./no/such/folder")
    with pytest.raises(ValueError, match="is a file: load it with its format"):
        load_dataset(csv_files["train"])
    with pytest.raises(TypeError, match="Unknown csv reader option"):
        load_dataset("csv", data_files=csv_files, not_an_option=1)
    with pytest.raises(ValueError, match="download_mode"):
        load_dataset("csv", data_files=csv_files, download_mode="sometimes")
    empty = tmp_path / "empty"
    write(empty / "README.md", "# nothing else\n")
    with pytest.raises(DataFilesNotFoundError):
        load_dataset(str(empty))


def test_load_from_disk_delegates(tmp_path, csv_files):
    from cove.datasets import load_from_disk

    dd = load_dataset("csv", data_files=csv_files)
    dd.save_to_disk(str(tmp_path / "saved"))
    back = load_from_disk(str(tmp_path / "saved"))
    assert back["test"].to_list() == dd["test"].to_list()
    dd["train"].save_to_disk(str(tmp_path / "one"))
    assert len(load_from_disk(str(tmp_path / "one"))) == 40
    with pytest.raises(FileNotFoundError, match="neither a Dataset directory"):
        load_from_disk(str(tmp_path))
    with pytest.raises(ValueError, match="saved with save_to_disk: load it with load_from_disk"):
        load_dataset(str(tmp_path / "saved"))


def test_split_sizes_are_verified_against_the_card(tmp_path):
    root = tmp_path / "sized"
    write(root / "README.md", "---\ndataset_info:\n  features:\n  - name: a\n    dtype: int64\n"
          "  splits:\n  - name: train\n    num_examples: 5\n---\n")
    write(root / "train.csv", "a\n1\n2\n")
    with pytest.raises(NonMatchingSplitsSizesError, match=r"\{'train': 2\} rows but the "
                                                           r"dataset card records \{'train': 5\}"):
        load_dataset(str(root))
    hf = pytest.importorskip("datasets")
    with pytest.raises(hf.exceptions.NonMatchingSplitsSizesError):
        oracle_load(str(root), cache_dir=tmp_path / "hf")
    assert load_dataset(str(root), split="train", verification_mode="no_checks")["a"] == [1, 2]
    with pytest.raises(ValueError, match="Unknown verification_mode"):
        load_dataset(str(root), verification_mode="some")


def test_fingerprints_are_stable_across_loads(csv_files):
    for split in ("train", "train[:10%]+test"):
        a = load_dataset("csv", data_files=csv_files, split=split)
        b = load_dataset("csv", data_files=csv_files, split=split)
        assert a._fingerprint == b._fingerprint
    assert a.split == "train[:10%]+test" and len(a) == 4 + 12


def test_packaged_with_data_dir_only(tmp_path):
    root = tmp_path / "dirs"
    write(root / "train.csv", csv_rows(0, 3))
    write(root / "test.csv", csv_rows(3, 2))
    ours = load_dataset("csv", data_dir=str(root))
    same(ours, oracle_load("csv", data_dir=str(root), cache_dir=tmp_path / "hf"))


def test_compressed_files_in_a_folder(tmp_path):
    import gzip

    root = tmp_path / "gz"
    os.makedirs(root)
    (root / "train.csv.gz").write_bytes(gzip.compress(csv_rows(0, 4).encode()))
    (root / "test.csv.gz").write_bytes(gzip.compress(csv_rows(4, 2).encode()))
    same(load_dataset(str(root)), oracle_load(str(root), cache_dir=tmp_path / "hf"))


def test_split_lists_and_bad_split_names(tmp_path, csv_files):
    train, test = load_dataset("csv", data_files=csv_files, split=["train", "test[:2]"])
    theirs = oracle_load("csv", data_files=csv_files, split=["train", "test[:2]"],
                         cache_dir=tmp_path / "hf")
    same(train, theirs[0])
    same(test, theirs[1])
    with pytest.raises(ValueError, match="Split name 'my split' must match"):
        load_dataset("csv", data_files={"my split": csv_files["train"]})
