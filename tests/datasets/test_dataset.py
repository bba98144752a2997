"""Dataset verbs against Hugging Face `datasets` 5 on the same data (rows, features, results)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import datasets as hf
from cove.datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    List,
    Value,
    concatenate_datasets,
    interleave_datasets,
)

DATA = {
    "id": list(range(12)),
    "text": ["apple", "kiwi", "banana", "fig", "cherry", "plum", "date", "lime", "pear",
             "grape", "mango", "melon"],
    "label": ["pos", "neg", "pos", "neg", "neu", "pos", "neg", "pos", "neu", "neg", "pos", "neu"],
    "score": [0.5, 1.5, 2.5, 0.25, 3.0, 1.0, 2.0, 0.75, 1.25, 2.25, 0.1, 0.9],
    "meta": [{"n": i, "tags": ["t"] * (i % 3)} for i in range(12)],
}


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    monkeypatch.setenv("COVE_DATASETS_CACHE", str(tmp_path / "cove-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def pair():
    return Dataset.from_dict(DATA), hf.Dataset.from_dict(DATA)


def same(ours, theirs):
    """Same rows, same features."""
    assert ours.column_names == theirs.column_names
    assert ours.features.to_dict() == theirs.features.to_dict()
    assert ours[:] == theirs[:]
    assert len(ours) == len(theirs)


def test_construction_and_access(pair):
    ours, theirs = pair
    same(ours, theirs)
    assert ours.shape == theirs.shape == (12, 5)
    assert repr(ours) == repr(theirs)
    assert ours[0] == theirs[0] and ours[-1] == theirs[-1]
    assert ours[2:7:2] == theirs[2:7:2]
    assert ours[[5, 0, 5]] == theirs[[5, 0, 5]]
    assert ours[np.array([3, 1])] == theirs[np.array([3, 1])]
    assert list(ours) == list(theirs)
    with pytest.raises(IndexError, match="out of range"):
        ours[12]
    with pytest.raises(KeyError, match="'nope' not in the dataset"):
        ours["nope"]


def test_column_object(pair):
    ours, theirs = pair
    col, ref = ours["text"], theirs["text"]
    assert len(col) == len(ref) == 12
    assert col[1] == ref[1] and col[-1] == ref[-1]
    assert col[2:4] == ref[2:4] == ["banana", "fig"]
    assert col[[0, 3]] == ref[[0, 3]]
    assert list(col) == list(ref)
    assert col == DATA["text"]
    assert col.column_name == "text"
    assert repr(ours.select(range(3))["id"]) == repr(theirs.select(range(3))["id"])
    shuffled = ours.shuffle(seed=3)
    assert list(shuffled["id"]) == list(theirs.shuffle(seed=3)["id"])


def test_from_list_pandas_generator():
    rows = [{"a": 1, "b": "x"}, {"a": 2}, {"b": "z", "a": 3}]
    same(Dataset.from_list(rows), hf.Dataset.from_list(rows))
    df = pd.DataFrame({"a": [1, 2], "f": [0.5, 1.5], "s": ["p", "q"]})
    same(Dataset.from_pandas(df), hf.Dataset.from_pandas(df))

    def gen(n):
        for i in range(n):
            yield {"i": i, "sq": [i] * i}

    ours = Dataset.from_generator(gen, gen_kwargs={"n": 5})
    theirs = hf.Dataset.from_generator(gen, gen_kwargs={"n": 5})
    same(ours, theirs)
    assert ours.cache_files  # written to the cache and memory-mapped
    calls = []

    def counted(n):
        calls.append(n)
        yield from gen(n)

    first = Dataset.from_generator(counted, gen_kwargs={"n": 4})
    assert calls == [4]
    del calls[:]  # same code, same closure contents: the cached file is reused
    assert Dataset.from_generator(counted, gen_kwargs={"n": 4})[:] == first[:]
    assert calls == []
    feats = Features({"i": Value("int32"), "sq": List(Value("int16"))})
    typed = Dataset.from_generator(gen, features=feats, gen_kwargs={"n": 3})
    assert typed.features == feats and typed["sq"][2] == [2, 2]


def test_from_dict_with_features_encodes_class_labels():
    feats = {"label": ClassLabel(names=["neg", "pos"]), "x": Value("float32")}
    ours = Dataset.from_dict({"label": ["pos", "neg"], "x": [1, 2]}, features=Features(feats))
    theirs = hf.Dataset.from_dict(
        {"label": ["pos", "neg"], "x": [1, 2]},
        features=hf.Features({"label": hf.ClassLabel(names=["neg", "pos"]),
                              "x": hf.Value("float32")}))
    same(ours, theirs)
    with pytest.raises(ValueError, match="different lengths"):
        Dataset.from_dict({"a": [1, 2], "b": [1]})


def test_map_variants(pair):
    ours, theirs = pair

    def upper(ex):
        return {"up": ex["text"].upper(), "n": len(ex["text"])}

    same(ours.map(upper), theirs.map(upper))

    def batched(batch, k):
        return {"up": [t * k for t in batch["text"]]}

    same(ours.map(batched, batched=True, batch_size=5, fn_kwargs={"k": 2}),
         theirs.map(batched, batched=True, batch_size=5, fn_kwargs={"k": 2}))

    def idx(ex, i):
        return {"i2": i * 2}

    same(ours.map(idx, with_indices=True), theirs.map(idx, with_indices=True))
    same(ours.map(lambda t: {"l": len(t)}, input_columns="text", remove_columns=["meta"]),
         theirs.map(lambda t: {"l": len(t)}, input_columns="text", remove_columns=["meta"]))

    def edit(ex):
        ex["score"] = ex["score"] * 10
        ex["meta"]["tags"].append("new")
        return ex

    same(ours.map(edit), theirs.map(edit))

    def explode(batch):
        return {"ch": [c for t in batch["text"] for c in t]}

    same(ours.map(explode, batched=True, remove_columns=ours.column_names),
         theirs.map(explode, batched=True, remove_columns=theirs.column_names))
    def as_table(batch):
        return pa.table({"l": [len(t) for t in batch["text"]]})

    def as_frame(batch):
        return pd.DataFrame({"l": [len(t) for t in batch["text"]]})

    for fn in (as_table, as_frame):
        same(ours.map(fn, batched=True), theirs.map(fn, batched=True))
    feats = Features({**ours.features, "n": Value("int16")})
    typed = ours.map(lambda ex: {"n": len(ex["text"])}, features=feats)
    assert typed.features["n"] == Value("int16")
    same(ours.map(lambda ex: None), theirs.map(lambda ex: None))
    same(ours.map(lambda b: {"w": b["id"]}, batched=True, batch_size=5, drop_last_batch=True),
         theirs.map(lambda b: {"w": b["id"]}, batched=True, batch_size=5, drop_last_batch=True))


def test_map_keeps_class_label_when_type_unchanged():
    feats = Features({"label": ClassLabel(names=["a", "b"]), "x": Value("int64")})
    ds = Dataset.from_dict({"label": [0, 1], "x": [1, 2]}, features=feats)
    out = ds.map(lambda ex: {"label": 1 - ex["label"]})
    assert out.features["label"] == feats["label"] and out["label"] == [1, 0]


def test_map_errors(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match=r"different lengths \{'a': 2, 'b': 3\}"):
        ours.map(lambda b: {"a": [1, 2], "b": [1, 2, 3]}, batched=True)
    with pytest.raises(ValueError, match=r"column\(s\) \['nope'\] not in the dataset"):
        ours.map(lambda ex: ex, remove_columns=["nope"])
    with pytest.raises(ValueError, match=r"input_columns.*\['missing'\]"):
        ours.map(lambda x: {}, input_columns=["missing"])
    with pytest.raises(ValueError, match="returned 2 rows for a batch of 12 rows"):
        ours.map(lambda b: {"x": [1, 2]}, batched=True)
    with pytest.raises(TypeError, match="must return a dict or None"):
        ours.map(lambda ex: 3)
    with pytest.raises(ValueError, match="same keys"):
        ours.map(lambda ex: {"a": 1} if ex["id"] else {"b": 1})
    with pytest.raises(TypeError, match="'x': its type is null"):
        ours.map(lambda ex: {"x": None if ex["id"] < 5 else 1}, writer_batch_size=5)


def test_filter_select_shuffle_sort(pair):
    ours, theirs = pair
    f_ours = ours.filter(lambda ex: ex["score"] > 1)
    same(f_ours, theirs.filter(lambda ex: ex["score"] > 1))
    assert f_ours._indices is not None and f_ours.data.num_rows == 12  # no copy
    assert f_ours.data.column("text").chunk(0).buffers()[2].address == \
        ours.data.column("text").chunk(0).buffers()[2].address
    same(ours.filter(lambda b: [s > 1 for s in b["score"]], batched=True, batch_size=4),
         theirs.filter(lambda b: [s > 1 for s in b["score"]], batched=True, batch_size=4))
    same(ours.filter(lambda ex, i: i % 3 == 0, with_indices=True),
         theirs.filter(lambda ex, i: i % 3 == 0, with_indices=True))
    same(ours.select([4, 1, 1, 9]), theirs.select([4, 1, 1, 9]))
    same(ours.select(range(3, 8)), theirs.select(range(3, 8)))
    same(ours.shuffle(seed=42), theirs.shuffle(seed=42))
    gen_ours, gen_theirs = np.random.default_rng(5), np.random.default_rng(5)
    same(ours.shuffle(generator=gen_ours), theirs.shuffle(generator=gen_theirs))
    same(ours.sort("text"), theirs.sort("text"))
    same(ours.sort(["label", "score"], reverse=[False, True]),
         theirs.sort(["label", "score"], reverse=[False, True]))
    # chained selections compose their indices mappings
    chained = ours.shuffle(seed=1).filter(lambda ex: ex["id"] % 2 == 0).sort("score")
    same(chained, theirs.shuffle(seed=1).filter(lambda ex: ex["id"] % 2 == 0).sort("score"))
    same(chained.flatten_indices(), theirs.shuffle(seed=1).filter(
        lambda ex: ex["id"] % 2 == 0).sort("score").flatten_indices())
    assert chained.flatten_indices()._indices is None
    same(ours.shard(3, 1), theirs.shard(3, 1))
    same(ours.shard(5, 4, contiguous=False), theirs.shard(5, 4, contiguous=False))


def test_train_test_split(pair):
    ours, theirs = pair
    for kwargs in ({"test_size": 0.25, "seed": 0}, {"test_size": 3, "train_size": 5, "seed": 1},
                   {"train_size": 0.5, "shuffle": False}):
        a, b = ours.train_test_split(**kwargs), theirs.train_test_split(**kwargs)
        assert isinstance(a, DatasetDict) and list(a) == ["train", "test"]
        same(a["train"], b["train"])
        same(a["test"], b["test"])
    with pytest.raises(ValueError):
        ours.train_test_split(test_size=20)


def test_stratified_split():
    labels = [i % 3 for i in range(60)] + [0] * 30
    ds = Dataset.from_dict({"x": list(range(90)), "y": labels},
                           features=Features({"x": Value("int64"),
                                              "y": ClassLabel(names=["a", "b", "c"])}))
    split = ds.train_test_split(test_size=0.2, stratify_by_column="y", seed=0)
    assert len(split["test"]) == 18 and len(split["train"]) == 72
    counts = np.bincount(split["test"]["y"], minlength=3)
    assert counts.tolist() == [10, 4, 4]
    assert sorted(list(split["train"]["x"]) + list(split["test"]["x"])) == list(range(90))
    with pytest.raises(ValueError, match="must be a ClassLabel column"):
        ds.cast_column("y", Value("int64")).train_test_split(stratify_by_column="y")


def test_column_verbs(pair):
    ours, theirs = pair
    same(ours.rename_column("text", "t"), theirs.rename_column("text", "t"))
    same(ours.rename_columns({"id": "i", "score": "s"}),
         theirs.rename_columns({"id": "i", "score": "s"}))
    same(ours.remove_columns(["meta", "score"]), theirs.remove_columns(["meta", "score"]))
    same(ours.select_columns(["score", "id"]), theirs.select_columns(["score", "id"]))
    same(ours.flatten(), theirs.flatten())
    same(ours.class_encode_column("label"), theirs.class_encode_column("label"))
    assert ours.unique("label") == theirs.unique("label")
    same(ours.cast_column("score", Value("float32")),
         theirs.cast_column("score", hf.Value("float32")))
    new_feats = ours.features.copy()
    new_feats["id"] = Value("int32")
    hf_feats = theirs.features.copy()
    hf_feats["id"] = hf.Value("int32")
    same(ours.cast(new_feats), theirs.cast(hf_feats))
    same(ours.add_column("z", list(range(12, 24))), theirs.add_column("z", list(range(12, 24))))
    picked = ours.select([3, 1])
    same(picked.add_column("z", [7, 8]), theirs.select([3, 1]).add_column("z", [7, 8]))
    with pytest.raises(ValueError, match="add_column: the column has 2 values for 12 rows"):
        ours.add_column("z", [1, 2])
    with pytest.raises(ValueError, match=r"rename_columns: column\(s\) \['x'\] not in"):
        ours.rename_column("x", "y")
    with pytest.raises(ValueError, match=r"Couldn't cast column 'text' from string to Value\('int64'\)"):
        ours.cast_column("text", Value("int64"))


def test_export(pair, tmp_path):
    ours, theirs = pair
    sub, hsub = ours.remove_columns("meta"), theirs.remove_columns("meta")
    assert ours.to_dict() == theirs.to_dict()
    assert ours.to_list() == theirs.to_list()
    pd.testing.assert_frame_equal(ours.to_pandas(), theirs.to_pandas())
    frames = list(ours.to_pandas(batch_size=5, batched=True))
    assert [len(f) for f in frames] == [5, 5, 2]
    sub.to_csv(tmp_path / "a.csv")
    hsub.to_csv(str(tmp_path / "b.csv"))
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    ours.to_json(tmp_path / "a.jsonl")
    theirs.to_json(str(tmp_path / "b.jsonl"))
    assert [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()] == \
        [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    ours.to_json(tmp_path / "a.json", lines=False)
    assert json.loads((tmp_path / "a.json").read_text()) == theirs.to_list()
    ours.select(range(3)).to_json(tmp_path / "small.jsonl", batch_size=2)
    assert len((tmp_path / "small.jsonl").read_text().splitlines()) == 3
    ours.to_parquet(tmp_path / "a.parquet")
    back = hf.Dataset.from_parquet(str(tmp_path / "a.parquet"))
    assert back.to_list() == theirs.to_list()


def test_exports_are_atomic(pair, tmp_path, monkeypatch):
    ours, _ = pair
    ours.to_parquet(tmp_path / "keep.parquet")
    before = (tmp_path / "keep.parquet").read_bytes()

    tables = Dataset._iter_tables

    def fail_after_first(self, batch_size):  # the data source fails half-way through
        for i, table in enumerate(tables(self, 5)):
            if i == 1:
                raise OSError("disk went away")
            yield table

    monkeypatch.setattr(Dataset, "_iter_tables", fail_after_first)
    with pytest.raises(OSError, match="disk went away"):
        ours.to_parquet(tmp_path / "keep.parquet")
    assert (tmp_path / "keep.parquet").read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.parquet"]  # no temp files left


def test_save_to_disk_interoperates(pair, tmp_path):
    ours, theirs = pair
    view = ours.shuffle(seed=0).select(range(9)).with_format("numpy", columns=["id"])
    view.save_to_disk(tmp_path / "ours", num_shards=2)
    files = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert files == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow",
                     "dataset_info.json", "state.json"]
    read_by_hf = hf.load_from_disk(str(tmp_path / "ours"))
    assert read_by_hf.format["type"] == "numpy" and read_by_hf.format["columns"] == ["id"]
    read_by_hf.reset_format()
    assert read_by_hf.to_list() == view.with_format(None).to_list()
    assert read_by_hf.features.to_dict() == view.features.to_dict()
    state = json.loads((tmp_path / "ours" / "state.json").read_text())
    assert state["_fingerprint"] == view._fingerprint
    assert Dataset.load_from_disk(tmp_path / "ours")._fingerprint == view._fingerprint

    hview = theirs.shuffle(seed=0).select(range(9))
    hview.save_to_disk(str(tmp_path / "theirs"), num_shards=3)
    loaded = Dataset.load_from_disk(tmp_path / "theirs")
    assert loaded.to_list() == hview.to_list()
    assert loaded.features.to_dict() == hview.features.to_dict()
    assert len(loaded.cache_files) == 3  # memory-mapped from the saved shards
    with pytest.raises(FileNotFoundError, match="not a saved Dataset"):
        Dataset.load_from_disk(tmp_path)


def test_array2d_save_load_both_ways(tmp_path):
    from cove.datasets import Array2D

    values = {"m": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], "a": [1, 2]}
    ours = Dataset.from_dict(values, features=Features({"m": Array2D((2, 2), "float32"),
                                                        "a": Value("int64")}))
    theirs = hf.Dataset.from_dict(values, features=hf.Features(
        {"m": hf.Array2D((2, 2), "float32"), "a": hf.Value("int64")}))
    ours.save_to_disk(tmp_path / "ours")
    read_by_hf = hf.load_from_disk(str(tmp_path / "ours"))  # needs datasets' extension type
    assert read_by_hf.features == theirs.features and read_by_hf[:] == theirs[:]
    theirs.save_to_disk(str(tmp_path / "theirs"))
    mine = Dataset.load_from_disk(tmp_path / "theirs")
    same(mine, theirs)
    np.testing.assert_array_equal(mine.with_format("numpy")[1]["m"],
                                  theirs.with_format("numpy")[1]["m"])


def test_dataset_dict_save_load_and_verbs(pair, tmp_path):
    ours, theirs = pair
    dd = DatasetDict({"train": ours.select(range(8)), "test": ours.select(range(8, 12))})
    hdd = hf.DatasetDict({"train": theirs.select(range(8)), "test": theirs.select(range(8, 12))})
    assert repr(dd) == repr(hdd)
    assert dd.num_rows == hdd.num_rows and dd.shape == hdd.shape
    assert dd.column_names == hdd.column_names
    dd.save_to_disk(tmp_path / "dd")
    back = hf.load_from_disk(str(tmp_path / "dd"))
    assert {k: v.to_list() for k, v in back.items()} == {k: v.to_list() for k, v in dd.items()}
    hdd.save_to_disk(str(tmp_path / "hdd"))
    mine = DatasetDict.load_from_disk(tmp_path / "hdd")
    assert {k: v.to_list() for k, v in mine.items()} == {k: v.to_list() for k, v in hdd.items()}
    mapped = dd.map(lambda ex: {"n": len(ex["text"])}).filter(lambda ex: ex["n"] > 4)
    hmapped = hdd.map(lambda ex: {"n": len(ex["text"])}).filter(lambda ex: ex["n"] > 4)
    for split in dd:
        same(mapped[split], hmapped[split])
    shuffled, hshuffled = dd.shuffle(seed=7), hdd.shuffle(seed=7)
    assert shuffled["train"]["id"] == hshuffled["train"]["id"]
    encoded = dd.class_encode_column("label")
    assert encoded["test"].features["label"] == encoded["train"].features["label"]
    assert dd.unique("label") == hdd.unique("label")


def test_concatenate_and_interleave(pair):
    ours, theirs = pair
    a, b, c = ours.select(range(3)), ours.select(range(3, 8)), ours.shuffle(seed=0).select([0, 1])
    ha, hb = theirs.select(range(3)), theirs.select(range(3, 8))
    hc = theirs.shuffle(seed=0).select([0, 1])
    same(concatenate_datasets([a, b, c]), hf.concatenate_datasets([ha, hb, hc]))
    left = ours.select_columns(["id"]).shuffle(seed=2)
    right = ours.select_columns(["text"])
    same(concatenate_datasets([left, right], axis=1),
         hf.concatenate_datasets([theirs.select_columns(["id"]).shuffle(seed=2),
                                  theirs.select_columns(["text"])], axis=1))
    for strategy in ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement"):
        same(interleave_datasets([a, b, c], stopping_strategy=strategy),
             hf.interleave_datasets([ha, hb, hc], stopping_strategy=strategy))
        same(interleave_datasets([a, b, c], probabilities=[0.5, 0.3, 0.2], seed=4,
                                 stopping_strategy=strategy),
             hf.interleave_datasets([ha, hb, hc], probabilities=[0.5, 0.3, 0.2], seed=4,
                                    stopping_strategy=strategy))
    with pytest.raises(ValueError, match="has the columns"):
        concatenate_datasets([a, a.remove_columns("meta")])
    with pytest.raises(ValueError, match="must be one of"):
        interleave_datasets([a, b], stopping_strategy="never")


def test_batch_repeat_and_align_labels(pair):
    ours, theirs = pair
    same(ours.batch(5), theirs.batch(5))
    same(ours.batch(5, drop_last_batch=True), theirs.batch(5, drop_last_batch=True))
    by_label = ours.sort("label")
    same(by_label.batch(by_column="label"), theirs.sort("label").batch(by_column="label"))
    same(ours.repeat(3), theirs.repeat(3))
    assert ours.repeat(2)._indices is not None
    encoded, hencoded = ours.class_encode_column("label"), theirs.class_encode_column("label")
    mapping = {"POS": 0, "neu": 1, "NEG": 2}
    same(encoded.align_labels_with_mapping(mapping, "label"),
         hencoded.align_labels_with_mapping(mapping, "label"))
    with pytest.raises(ValueError, match="must be a ClassLabel"):
        ours.align_labels_with_mapping(mapping, "label")


def test_from_files(pair, tmp_path):
    ours, theirs = pair
    flat = ours.remove_columns("meta")
    flat.to_csv(tmp_path / "d.csv")
    flat.to_json(tmp_path / "d.jsonl")
    flat.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.txt").write_text("one\ntwo\n")
    for kind, name in (("csv", "d.csv"), ("json", "d.jsonl"), ("parquet", "d.parquet"),
                       ("text", "d.txt")):
        mine = getattr(Dataset, f"from_{kind}")(str(tmp_path / name))
        ref = getattr(hf.Dataset, f"from_{kind}")(str(tmp_path / name))
        assert mine.to_list() == ref.to_list(), kind
        assert mine.cache_files  # prepared in the cache and memory-mapped
    splits = DatasetDict.from_csv({"train": str(tmp_path / "d.csv"),
                                   "test": str(tmp_path / "d.csv")})
    assert splits.num_rows == {"train": 12, "test": 12}


def test_combining_keeps_a_common_format():
    import cove.datasets as cds

    def formats(lib):
        a = lib.Dataset.from_dict({"x": [1, 2]}).with_format("numpy")
        b = lib.Dataset.from_dict({"x": [3]}).with_format("numpy")
        return [lib.concatenate_datasets([a, b]).format["type"],
                lib.concatenate_datasets([a, b.with_format(None)]).format["type"],
                lib.interleave_datasets([a, b]).format["type"],
                a.add_item({"x": 5}).format["type"], type(a.add_item({"x": 5})[2]["x"]).__name__]

    assert formats(cds) == formats(hf)


def test_tokenizer_columns_stored_in_small_ints():
    """input_ids as int32 and the masks as int8 when their type is inferred and they fit, as
    `datasets` stores them; nested lists, kept features and values out of range stay int64."""
    rows = {"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]], "labels": [1, 2],
            "token_type_ids": [[0, 300], [0]]}

    def add(b):
        return {"special_tokens_mask": [[0] * len(x) for x in b["input_ids"]],
                "input_ids": [[[1]] for _ in b["input_ids"]]}

    ours, theirs = Dataset.from_dict(rows), hf.Dataset.from_dict(rows)
    assert repr(ours.features) == repr(theirs.features)
    assert repr(ours.map(add, batched=True).features) == repr(theirs.map(add, batched=True).features)
    assert ours.features["input_ids"] == List(Value("int32"))
    assert ours.features["token_type_ids"] == List(Value("int64"))  # 300 does not fit int8
