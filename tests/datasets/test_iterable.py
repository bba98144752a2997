"""Streaming datasets: parity with datasets.IterableDataset, resume, sharding, DataLoader."""

from __future__ import annotations

import subprocess
import sys

import datasets.distributed
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

import datasets as hf
from cove.datasets import (
    ClassLabel,
    Features,
    IterableDataset,
    IterableDatasetDict,
    List,
    Value,
    split_dataset_by_node,
)

SHARDS = ["a", "b", "c", "d"]


def gen(shards, n=5):
    for s in shards:
        for i in range(n):
            yield {"s": s, "i": i, "t": f"{s}-{i}", "v": [float(i), i / 2]}


def both(**kwargs):
    """The same generator dataset in cove and in datasets."""
    kwargs.setdefault("gen_kwargs", {"shards": SHARDS})
    hf_kwargs = dict(kwargs)
    if isinstance(kwargs.get("features"), Features):
        hf_kwargs["features"] = hf.Features.from_dict(kwargs["features"].to_dict())
    return IterableDataset.from_generator(gen, **kwargs), hf.IterableDataset.from_generator(
        gen, **hf_kwargs)


PIPELINES = {
    "plain": lambda d: d,
    "map": lambda d: d.map(lambda e: {"j": e["i"] * 2}),
    "map_indices_input_columns": lambda d: d.map(
        lambda t, idx, k: {"u": f"{t}/{idx}/{k}"}, input_columns="t", with_indices=True,
        fn_kwargs={"k": 7}),
    "map_remove": lambda d: d.map(lambda e: {"s": e["s"].upper()}, remove_columns=["s", "v"]),
    "map_batched_grow": lambda d: d.map(
        lambda b: {"x": [t for t in b["t"] for _ in range(2)]}, batched=True, batch_size=3,
        remove_columns=["s", "i", "t", "v"]),
    "map_batched_indices": lambda d: d.map(
        lambda b, idx: {"k": [i * 100 + j for i, j in zip(b["i"], idx, strict=True)]},
        batched=True, batch_size=4, with_indices=True),
    "filter": lambda d: d.filter(lambda e: e["i"] % 2 == 0),
    "filter_batched": lambda d: d.filter(lambda b: [x > 1 for x in b["i"]], batched=True,
                                         batch_size=3),
    "filter_indices": lambda d: d.filter(lambda e, idx: idx % 3 == 0, with_indices=True),
    "take_skip": lambda d: d.skip(3).take(9),
    "take_more": lambda d: d.take(100),
    "batch": lambda d: d.batch(6),
    "batch_drop_last": lambda d: d.batch(6, drop_last_batch=True),
    "columns": lambda d: d.select_columns(["t", "i"]).rename_column("t", "text"),
    "remove_rename": lambda d: d.remove_columns("v").rename_columns({"s": "shard", "i": "n"}),
    "chain": lambda d: d.filter(lambda e: e["i"] != 2).map(
        lambda b: {"i": [x + 1 for x in b["i"]]}, batched=True, batch_size=4).skip(2).batch(3),
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipelines_match_datasets(name):
    ours, theirs = both()
    ours, theirs = PIPELINES[name](ours), PIPELINES[name](theirs)
    assert list(ours) == list(theirs)
    assert ours.n_shards == theirs.n_shards


def test_features_casts_and_formats_match_datasets():
    features = Features({"s": ClassLabel(names=SHARDS), "i": Value("float32"),
                         "t": Value("string"), "v": List(Value("float64"))})
    ours, theirs = both(features=features)
    assert list(ours) == list(theirs)
    assert ours.features.to_dict() == theirs.features.to_dict()
    assert ours.column_names == theirs.column_names == ["s", "i", "t", "v"]
    batched = ours.batch(2)
    assert batched.features.to_dict() == theirs.batch(2).features.to_dict()
    assert ours.map(lambda e: e).features is None and ours.filter(bool).features == features
    cast = ours.cast_column("i", Value("int32")).rename_column("t", "text")
    assert list(cast) == list(theirs.cast_column("i", hf.Value("int32"))
                              .rename_column("t", "text"))
    assert cast.features["i"] == Value("int32") and "text" in cast.column_names
    for fmt in ("numpy", "torch"):
        mine = next(iter(ours.with_format(fmt)))
        ref = next(iter(theirs.with_format(fmt)))
        assert mine["t"] == ref["t"]
        for key in ("s", "i", "v"):
            assert type(mine[key]) is type(ref[key])
            assert np.asarray(mine[key]).tolist() == np.asarray(ref[key]).tolist()
        mine = next(ours.with_format(fmt).iter(batch_size=3))
        ref = next(theirs.with_format(fmt).iter(batch_size=3))
        for key in ("s", "i", "v"):
            assert np.asarray(mine[key]).tolist() == np.asarray(ref[key]).tolist()
    table = next(ours.with_format("arrow").iter(batch_size=4))
    assert isinstance(table, pa.Table) and table.num_rows == 4
    assert table.schema.field("s").type == pa.int64()
    assert ours._head(2) == theirs._head(2)
    assert "features: ['s', 'i', 't', 'v']" in repr(ours) and "num_shards: 4" in repr(ours)


def test_map_sees_the_format():
    ours, _ = both()
    seen = next(iter(ours.with_format("torch").map(lambda e: {"kind": type(e["i"]).__name__})))
    assert seen["kind"] == "Tensor"


def test_bad_input_is_named():
    ours, _ = both(features=Features({"s": Value("string"), "i": Value("int64"),
                                      "t": Value("string"), "v": List(Value("float64"))}))
    with pytest.raises(ValueError, match=r"\['nope'\].*not in the dataset"):
        ours.remove_columns(["nope"])
    with pytest.raises(ValueError, match="Column lengths mismatch"):
        list(ours.map(lambda b: {"x": [1]}, batched=True))
    with pytest.raises(ValueError, match="different lengths"):
        IterableDataset.from_generator(gen, gen_kwargs={"shards": ["a"], "n": [1, 2]})
    with pytest.raises(ValueError, match="Unknown format"):
        ours.with_format("tensorflow2")
    unknown, _ = both()
    with pytest.raises(ValueError, match=r"\['nope'\] to rename"):
        list(unknown.rename_column("nope", "x"))
    with pytest.raises(ValueError, match="does not match the dataset"):
        ours.take(3).load_state_dict(ours.map(lambda e: e).state_dict())


RESUMABLE = ["plain", "map_indices_input_columns", "map_batched_grow", "map_batched_indices",
             "filter_batched", "filter_indices", "take_skip", "batch_drop_last", "chain"]


@pytest.mark.parametrize("name", RESUMABLE)
def test_state_dict_resumes_after_the_last_example(name):
    ds = PIPELINES[name](both()[0])
    full = list(ds)
    for k in range(len(full) + 1):
        it = iter(ds)
        head = [next(it) for _ in range(k)]
        state = ds.state_dict()
        resumed = PIPELINES[name](both()[0])
        resumed.load_state_dict(state)
        assert head + list(resumed) == full, k


def test_state_dict_matches_datasets_positions():
    ours, theirs = both()
    for d in (ours, theirs):
        it = iter(d)
        for _ in range(7):
            next(it)
    inner = ours.state_dict()["examples_iterable"]
    ref = theirs.state_dict()["examples_iterable"]
    assert (inner["shard_idx"], inner["shard_example_idx"]) == (
        ref["shard_idx"], ref["shard_example_idx"]) == (1, 2)


def test_shuffle_orders_shards_and_buffer_by_seed_and_epoch():
    ds = both()[0]
    shuffled = ds.shuffle(seed=3, buffer_size=4)
    first = list(shuffled)
    assert first != list(ds) and sorted(map(str, first)) == sorted(map(str, ds))
    assert list(ds.shuffle(seed=3, buffer_size=4)) == first  # same seed, same order
    shuffled.set_epoch(1)
    assert list(shuffled) != first and shuffled.epoch == 1
    # Resuming keeps the shard order but loses the buffer's content, as datasets documents.
    it = iter(shuffled)
    head = [next(it) for _ in range(8)]
    state = shuffled.state_dict()
    again = ds.shuffle(seed=3, buffer_size=4)
    again.load_state_dict(state)
    assert again.epoch == 1
    rest = list(again)
    keys = [f"{e['s']}{e['i']}" for e in head + rest]
    assert len(keys) == len(set(keys)) and len(rest) == 20 - 8 - 4  # 4 were in the buffer
    # take() before shuffle() keeps the same examples
    assert sorted(map(str, ds.take(6).shuffle(seed=1))) == sorted(map(str, ds.take(6)))


@pytest.mark.parametrize("contiguous", [True, False])
def test_shard_matches_datasets(contiguous):
    ours, theirs = both()
    for index in range(3):
        mine = ours.shard(3, index, contiguous=contiguous)
        ref = theirs.shard(3, index, contiguous=contiguous)
        assert list(mine) == list(ref) and mine.n_shards == ref.n_shards


@pytest.mark.parametrize("world_size", [2, 3])  # 4 shards: divisible by 2, not by 3
def test_split_dataset_by_node_matches_datasets(world_size):
    ours, theirs = both()
    seen = []
    for rank in range(world_size):
        mine = split_dataset_by_node(ours, rank=rank, world_size=world_size)
        ref = datasets.distributed.split_dataset_by_node(theirs, rank=rank, world_size=world_size)
        assert list(mine) == list(ref)
        assert mine.n_shards == ref.n_shards
        seen += list(mine)
    assert sorted(map(str, seen)) == sorted(map(str, ours))
    with pytest.raises(ValueError, match="rank"):
        split_dataset_by_node(ours, rank=world_size, world_size=world_size)


@pytest.mark.parametrize("shards", [SHARDS, ["a"]])
def test_dataloader_workers_read_each_example_once(shards):
    import torch.utils.data

    ds = IterableDataset.from_generator(gen, gen_kwargs={"shards": shards}).map(_double)
    assert isinstance(ds, torch.utils.data.IterableDataset)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = sorted((e["s"], int(e["j"])) for e in loader)
    assert got == sorted((e["s"], e["j"]) for e in ds) and len(got) == 5 * len(shards)


def test_dataloader_workers_within_a_node():
    import torch.utils.data

    ds = IterableDataset.from_generator(gen, gen_kwargs={"shards": SHARDS})
    everything = sorted((e["s"], e["i"]) for e in ds)
    for world_size in (2, 3):  # whole shards per node, then every 3rd example per worker
        got = []
        for rank in range(world_size):
            node = split_dataset_by_node(ds, rank=rank, world_size=world_size)
            loader = torch.utils.data.DataLoader(node, batch_size=None, num_workers=2)
            got += [(e["s"], int(e["i"])) for e in loader]
        assert sorted(got) == everything


def _double(example):
    return {"j": example["i"] * 2}


def test_from_files_matches_datasets_streaming(tmp_path):
    tables = [pa.table({"id": list(range(k * 50, k * 50 + 50)), "text": [f"t{i}" for i in
                        range(50)]}) for k in range(3)]
    parquet = [str(tmp_path / f"p{k}.parquet") for k in range(3)]
    csv = [str(tmp_path / f"c{k}.csv") for k in range(3)]
    for table, p, c in zip(tables, parquet, csv, strict=True):
        pq.write_table(table, p, row_group_size=16)
        pa_csv.write_csv(table, c)
    for kind, files in (("parquet", parquet), ("csv", csv)):
        ours = IterableDataset._from_files(files, kind, split="train")
        theirs = hf.load_dataset(kind, data_files=files, split="train", streaming=True)
        assert ours.n_shards == theirs.n_shards == 3
        assert list(ours) == list(theirs)
        ds = ours.skip(40).take(30)
        it = iter(ds)
        head = [next(it) for _ in range(17)]  # stops inside the second file
        state = ds.state_dict()
        again = IterableDataset._from_files(files, kind).skip(40).take(30)
        again.load_state_dict(state)
        assert head + list(again) == list(theirs.skip(40).take(30))
    typed = IterableDataset._from_files(parquet, "parquet", features=Features(
        {"id": Value("float64"), "text": Value("string")}))
    assert next(iter(typed)) == {"id": 0.0, "text": "t0"}


def test_from_arrow_tables_and_dict():
    tables = [pa.table({"x": [1, 2]}), pa.table({"x": [3]})]
    ds = IterableDataset._from_arrow_tables(tables, split="train")
    assert ds.n_shards == 2 and ds.features == Features({"x": Value("int64")})
    assert [e["x"] for e in ds] == [1, 2, 3]
    dd = IterableDatasetDict({"train": ds, "test": ds.take(1)})
    out = dd.map(lambda e: {"y": e["x"] + 1}).rename_column("y", "z")
    assert [e["z"] for e in out["train"]] == [2, 3, 4] and list(out["test"]) == [
        {"x": 1, "z": 2}]
    assert dd.num_shards == {"train": 2, "test": 2}
    assert "IterableDatasetDict" in repr(dd)


def test_import_does_not_import_torch():
    code = ("import sys, cove.datasets as d; d.IterableDataset; d.split_dataset_by_node; "
            "import cove.datasets.remote; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def _letters(name, n):
    for i in range(n[0]):
        yield {"x": f"{name}{i}"}


def _pair(name, n, lib):
    return lib.IterableDataset.from_generator(_letters, gen_kwargs={"name": name, "n": (n,)})


COMBINATIONS = {
    "cycle_first": {},
    "cycle_all": {"stopping_strategy": "all_exhausted"},
    "random_first": {"probabilities": [0.3, 0.7], "seed": 42},
    "random_all": {"probabilities": [0.3, 0.7], "seed": 42, "stopping_strategy": "all_exhausted"},
    "random_other_seed": {"probabilities": [0.6, 0.4], "seed": 7,
                          "stopping_strategy": "all_exhausted"},
    "cycle_once": {"stopping_strategy": "all_exhausted_without_replacement"},
    "random_once": {"probabilities": [0.5, 0.2, 0.3], "seed": 42,
                    "stopping_strategy": "all_exhausted_without_replacement"},
    "random_all_three": {"probabilities": [0.5, 0.2, 0.3], "seed": 1,
                         "stopping_strategy": "all_exhausted"},
}


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_interleave_matches_datasets_and_resumes(name):
    from cove.datasets.iterable_dataset import _interleave_iterable_datasets

    kwargs = COMBINATIONS[name]
    sizes = {"a": 3, "b": 5, "c": 2}
    if len(kwargs.get("probabilities") or [0, 0]) == 2:
        sizes.pop("c")
    ours = _interleave_iterable_datasets(
        [_pair(key, n, IterableDataset_) for key, n in sizes.items()], **kwargs)
    theirs = hf.interleave_datasets([_pair(key, n, hf) for key, n in sizes.items()], **kwargs)
    full = list(ours)
    assert full == list(theirs)
    for k in range(len(full) + 1):
        it = iter(ours)
        head = [next(it) for _ in range(k)]
        again = _interleave_iterable_datasets(
            [_pair(key, n, IterableDataset_) for key, n in sizes.items()], **kwargs)
        again.load_state_dict(ours.state_dict())
        assert head + list(again) == full, k


def test_concatenate_matches_datasets_and_resumes():
    from cove.datasets.iterable_dataset import _concatenate_iterable_datasets

    ours = _concatenate_iterable_datasets([_pair("a", 3, IterableDataset_),
                                           both()[0].select_columns(["t"]).rename_column("t", "x")])
    theirs = hf.concatenate_datasets([_pair("a", 3, hf),
                                      both()[1].select_columns(["t"]).rename_column("t", "x")])
    full = list(ours)
    assert full == list(theirs) and len(full) == 23
    it = iter(ours)
    head = [next(it) for _ in range(5)]
    again = _concatenate_iterable_datasets([_pair("a", 3, IterableDataset_),
                                            both()[0].select_columns(["t"]).rename_column("t", "x")])
    again.load_state_dict(ours.state_dict())
    assert head + list(again) == full


class IterableDataset_:  # noqa: N801 - stands in for the datasets module in _pair
    IterableDataset = IterableDataset


def test_constructors_and_exports_match_datasets(tmp_path):
    import pandas as pd

    columns = {"a": list(range(10)), "b": [f"r{i}" for i in range(10)]}
    for shards in (1, 3):
        ours = IterableDataset.from_dict(columns, num_shards=shards)
        theirs = hf.IterableDataset.from_dict(columns, num_shards=shards)
        assert list(ours) == list(theirs) and ours.n_shards == theirs.n_shards
        assert ours.features.to_dict() == theirs.features.to_dict()
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert list(IterableDataset.from_list(rows)) == list(hf.IterableDataset.from_list(rows))
    frame = pd.DataFrame(columns)
    assert list(IterableDataset.from_pandas(frame)) == list(hf.IterableDataset.from_pandas(frame))
    ours = IterableDataset.from_dict(columns, num_shards=2)
    theirs = hf.IterableDataset.from_dict(columns, num_shards=2)
    assert list(ours.repeat(3)) == list(theirs.repeat(3))
    assert list(ours.repeat(None).take(25)) == list(theirs.repeat(None).take(25))
    extra = [i * 1.5 for i in range(10)]
    assert list(ours.add_column("c", extra)) == list(theirs.add_column("c", extra))
    assert ours.to_list() == theirs.to_list() and ours.to_dict() == theirs.to_dict()
    assert ours.to_pandas().equals(theirs.to_pandas())
    assert ours.num_columns == 2 and ours.description == ""
    resumable = ours.repeat(2)
    it = iter(resumable)
    head = [next(it) for _ in range(13)]
    again = ours.repeat(2)
    again.load_state_dict(resumable.state_dict())
    assert head + list(again) == list(theirs.repeat(2))

    table = pa.table(columns)
    pa_csv.write_csv(table, tmp_path / "x.csv")
    (tmp_path / "x.jsonl").write_text("".join(f'{{"a": {i}, "b": "r{i}"}}\n' for i in range(10)))
    (tmp_path / "x.txt").write_text("one\ntwo\n\nthree\n")
    pq.write_table(table, tmp_path / "x.parquet")
    for verb, name in (("from_csv", "x.csv"), ("from_json", "x.jsonl"),
                       ("from_text", "x.txt"), ("from_parquet", "x.parquet")):
        path = str(tmp_path / name)
        assert list(getattr(IterableDataset, verb)(path)) == list(
            getattr(hf.IterableDataset, verb)(path)), verb
    with pa.OSFile(str(tmp_path / "x.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    assert list(IterableDataset.from_file(str(tmp_path / "x.arrow"))) == table.to_pylist()


def _kinds(value):
    if isinstance(value, dict):
        return {k: _kinds(v) for k, v in value.items()}
    return type(value).__name__, str(getattr(value, "dtype", ""))


@pytest.mark.parametrize("fmt", ["numpy", "torch"])
def test_formats_of_an_arrow_stream_match_datasets(fmt):
    # datasets formats an Arrow-backed stream as a map-style Dataset (numpy scalars, float32
    # arrays, unicode string arrays) and Python examples (after filter, rename, ...) otherwise
    from cove.datasets import Dataset

    data = {"f": [0.5, 1.5, 2.5], "v": [[0.5, 1.0], [2.0, 3.0], [4.0, 5.0]], "i": [1, 2, 3],
            "s": ["a", "b", "c"]}
    steps = {"plain": lambda d: d, "take": lambda d: d.take(2),
             "select": lambda d: d.select_columns(["f", "s"]),
             "filter": lambda d: d.filter(lambda e: True)}
    for name, step in steps.items():
        got, want = (step(lib.from_dict(data).to_iterable_dataset()).with_format(fmt)
                     for lib in (Dataset, hf.Dataset))
        assert _kinds(next(iter(got))) == _kinds(next(iter(want))), name
        assert _kinds(next(got.iter(batch_size=2))) == _kinds(next(want.iter(batch_size=2))), name
