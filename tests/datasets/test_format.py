"""Output formats (numpy, torch, pandas, arrow), DataLoader use and to_iterable_dataset."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

import cove.datasets as cds
import datasets as hf
from cove.datasets import Dataset

DATA = {
    "i": [1, 2, 3, 4, 5],
    "f": [0.5, 1.5, 2.5, 3.5, 4.5],
    "s": ["a", "b", "c", "d", "e"],
    "v": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]],
    "r": [[1], [2, 3], [], [4], [5, 6, 7]],
    "b": [True, False, True, False, True],
}


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    monkeypatch.setenv("COVE_DATASETS_CACHE", str(tmp_path / "cove-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def equal(a, b):
    """Deep equality for dicts/lists of numpy arrays and tensors, with dtypes."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            equal(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype
        if a.dtype == object:
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                equal(x, y)
        else:
            np.testing.assert_array_equal(a, b)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            equal(x, y)
    else:
        assert type(a) is type(b) and a == b, (a, b)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_numpy_and_torch_match_datasets(kind):
    ours = Dataset.from_dict(DATA).with_format(kind)
    theirs = hf.Dataset.from_dict(DATA).with_format(kind)
    equal(ours[0], theirs[0])
    equal(ours[1:4], theirs[1:4])
    equal(ours[[4, 0]], theirs[[4, 0]])
    for name in ("i", "f", "v", "s"):
        equal(ours[name][2], theirs[name][2])
    assert ours.format == theirs.format
    cols = ours.with_format(kind, columns=["i", "v"])
    hcols = theirs.with_format(kind, columns=["i", "v"])
    equal(cols[0], hcols[0])
    keep = ours.with_format(kind, columns=["i"], output_all_columns=True)
    hkeep = theirs.with_format(kind, columns=["i"], output_all_columns=True)
    equal(keep[0], hkeep[0])
    equal(keep[:2], hkeep[:2])


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_dtype_defaults_match_datasets(kind):
    from cove.datasets import Features, List, Value

    values = {"i32": [1, 2], "f16": [1.0, 2.5], "n": [None, 1], "rf": [[0.5], []],
              "m": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}
    spec = {"i32": "int32", "f16": "float16", "n": "int64"}
    ours = Dataset.from_dict(values, features=Features(
        {**{k: Value(v) for k, v in spec.items()}, "rf": List(Value("float64")),
         "m": List(List(Value("int8")))})).with_format(kind)
    theirs = hf.Dataset.from_dict(values, features=hf.Features(
        {**{k: hf.Value(v) for k, v in spec.items()}, "rf": hf.List(hf.Value("float64")),
         "m": hf.List(hf.List(hf.Value("int8")))})).with_format(kind)
    equal(ours[1], theirs[1])
    batch, hbatch = ours[:2], theirs[:2]
    for name in ("i32", "f16", "rf", "m"):
        equal(batch[name], hbatch[name])
    assert str(batch["n"].dtype) == str(hbatch["n"].dtype)


def test_pandas_and_arrow_formats():
    ours = Dataset.from_dict(DATA)
    theirs = hf.Dataset.from_dict(DATA)
    pd.testing.assert_frame_equal(ours.with_format("pandas")[1:3].reset_index(drop=True),
                                  theirs.with_format("pandas")[1:3].reset_index(drop=True))
    assert isinstance(ours.with_format("pandas")["s"], pd.Series)
    table = ours.with_format("arrow")[:2]
    assert isinstance(table, pa.Table) and table.equals(theirs.with_format("arrow")[:2])
    assert isinstance(ours.with_format("arrow")["i"], pa.ChunkedArray)
    with pytest.raises(ValueError, match="Unknown format type 'tensorflow'"):
        ours.with_format("tensorflow")
    with pytest.raises(ValueError, match=r"\['zz'\] not in the dataset"):
        ours.with_format("numpy", columns=["zz"])


def test_set_reset_and_formatted_as():
    ds = Dataset.from_dict(DATA)
    ds.set_format("numpy", columns=["i"])
    assert isinstance(ds[0]["i"], np.integer) and list(ds[0]) == ["i"]
    with ds.formatted_as("torch"):
        assert isinstance(ds[0]["i"], torch.Tensor)
    assert isinstance(ds[0]["i"], np.integer)
    ds.reset_format()
    assert ds[0] == {k: v[0] for k, v in DATA.items()}
    # select / shuffle / map keep the format (as datasets)
    ds.set_format("torch", columns=["i", "f"])
    assert isinstance(ds.shuffle(seed=0)[0]["f"], torch.Tensor)
    mapped = ds.map(lambda ex: {"g": ex["f"] * 2})
    assert mapped[0]["f"].dtype == torch.float32


def test_transform():
    ds = Dataset.from_dict(DATA).with_transform(lambda b: {"twice": [x * 2 for x in b["i"]]})
    assert ds[0] == {"twice": 2}
    assert ds[:2] == {"twice": [2, 4]}


def test_dataloader_batches_torch_format():
    ds = Dataset.from_dict(DATA).with_format("torch")
    loader = torch.utils.data.DataLoader(ds.select_columns(["i", "f", "v"]), batch_size=2)
    batches = list(loader)
    assert len(batches) == 3
    assert torch.equal(batches[0]["i"], torch.tensor([1, 2]))
    assert batches[0]["f"].dtype == torch.float32
    assert batches[0]["v"].shape == (2, 2)
    assert torch.equal(batches[2]["v"], torch.tensor([[9, 10]]))
    strings = list(torch.utils.data.DataLoader(ds.select_columns(["s"]), batch_size=4))
    assert strings[0]["s"] == ["a", "b", "c", "d"]
    shuffled = torch.utils.data.DataLoader(ds.select_columns(["i"]), batch_size=8, shuffle=True)
    assert sorted(next(iter(shuffled))["i"].tolist()) == [1, 2, 3, 4, 5]


def test_iter_batches_and_rows():
    ds = Dataset.from_dict(DATA).select([4, 3, 2, 1, 0])
    assert [b["i"] for b in ds.iter(batch_size=2)] == [[5, 4], [3, 2], [1]]
    assert [b["i"] for b in ds.iter(batch_size=2, drop_last_batch=True)] == [[5, 4], [3, 2]]
    assert [row["s"] for row in ds] == ["e", "d", "c", "b", "a"]
    np_rows = list(ds.with_format("numpy"))
    assert isinstance(np_rows[0]["i"], np.integer)


def test_to_iterable_dataset():
    ds = Dataset.from_dict(DATA).shuffle(seed=1)
    it = ds.to_iterable_dataset(num_shards=2)
    assert it.num_shards == 2
    assert list(it) == list(ds)
    assert it.features == ds.features
    mapped = it.map(lambda ex: {"j": ex["i"] * 10})
    assert [ex["j"] for ex in mapped] == [x * 10 for x in ds["i"]]
    plain = Dataset.from_dict(DATA).to_iterable_dataset(num_shards=3)
    assert plain.num_shards == 3 and [ex["s"] for ex in plain] == DATA["s"]


def test_importing_cove_datasets_does_not_import_torch():
    code = ("import sys, cove.datasets as d; ds = d.Dataset.from_dict({'a': [1]}); "
            "ds.with_format('numpy')[0]; ds.map(lambda x: x); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


def test_format_columns_take_in_the_columns_a_map_adds():
    # set_format(columns=...) then map: the new columns are formatted too, as in datasets
    def add(batch):
        return {"c": [2 * x for x in batch["a"]]}

    outputs = []
    for lib in (hf, cds):
        ds = lib.Dataset.from_dict({"a": [1, 2], "b": ["x", "y"]}).with_format(
            "numpy", columns=["a"])
        kept = ds.map(add, batched=True)
        removed = ds.map(add, batched=True, remove_columns=["a"])
        outputs.append((set(kept.format["columns"]), sorted(kept[0]),
                        set(removed.format["columns"]), sorted(removed[0]),
                        sorted(ds.select_columns(["a", "b"])[0])))
    assert outputs[0] == outputs[1]


def test_transform_gets_only_the_format_columns():
    def results(lib):
        seen = []

        def transform(batch):
            seen.append(sorted(batch))
            return {k: [str(v) for v in values] for k, values in batch.items()}

        ds = lib.Dataset.from_dict({"a": [1, 2, 3], "b": ["x", "y", "z"]})
        only = ds.with_transform(transform, columns=["a"])
        every = ds.with_transform(transform, columns=["a"], output_all_columns=True)
        return only[0], only[:2], every[0], every[1:3], seen

    assert results(cds) == results(hf)
