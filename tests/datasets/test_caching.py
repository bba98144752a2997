"""map/filter caching: fingerprints, reuse across processes, cache size, num_proc."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import datasets as hf
from cove.datasets import Dataset, disable_caching, enable_caching, is_caching_enabled
from cove.datasets.fingerprint import cache_usage, hash_object

ROWS = 400


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    monkeypatch.setenv("COVE_DATASETS_CACHE", str(tmp_path / "cove-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    yield
    enable_caching()


def data() -> dict:
    return {"id": list(range(ROWS)),
            "text": [("lorem ipsum dolor sit amet " * (1 + i % 7)).strip() for i in range(ROWS)],
            "tags": [["a"] * (i % 3) for i in range(ROWS)]}


@pytest.fixture
def on_disk(tmp_path) -> Dataset:
    """A file-backed dataset (maps on it are cached next to its file)."""
    Dataset.from_dict(data()).save_to_disk(tmp_path / "saved")
    return Dataset.load_from_disk(tmp_path / "saved")


CHILD = r"""
import json, sys
from cove.datasets import Dataset

saved, log = sys.argv[1:3]

def count_words(batch):
    with open(log, "a") as f:
        f.write("map %d\n" % len(batch["text"]))
    return {"words": [len(t.split()) for t in batch["text"]]}

def keep(example):
    with open(log, "a") as f:
        f.write("filter\n")
    return example["words"] > 10

ds = Dataset.load_from_disk(saved)
mapped = ds.map(count_words, batched=True, batch_size=100)
kept = mapped.filter(keep)
print(json.dumps({"words": mapped["words"][:], "kept": kept["id"][:],
                  "files": [f["filename"] for f in kept.cache_files]}))
"""


def test_map_and_filter_reuse_the_cache_in_a_new_process(tmp_path):
    Dataset.from_dict(data()).save_to_disk(tmp_path / "saved")
    log = tmp_path / "calls.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "saved"), str(log)],
                             capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        calls = log.read_text().splitlines()
        # the first run called the functions; the second loaded cache-<fingerprint>.arrow files
        assert calls.count("map 100") == 4 and calls.count("filter") == ROWS
    assert runs[0] == runs[1]
    expected = [len(t.split()) for t in data()["text"]]
    assert runs[0]["words"] == expected
    assert runs[0]["kept"] == [i for i, n in enumerate(expected) if n > 10]
    names = [Path(f).name for f in runs[0]["files"]]
    assert names[0] == "data-00000-of-00001.arrow"
    assert len(names) == 3 and all(n.startswith("cache-") for n in names[1:])


def test_function_hash_tracks_code_closures_globals_and_defaults():
    def make(k):
        return lambda ex: {"y": ex["id"] * k}

    assert hash_object(make(2)) == hash_object(make(2))
    assert hash_object(make(2)) != hash_object(make(3))  # closure value

    def f(ex, scale=1):
        return {"y": ex["id"] * scale}

    def g(ex, scale=2):
        return {"y": ex["id"] * scale}

    assert hash_object(f) != hash_object(g)  # default argument
    namespace: dict = {"OFFSET": 1}
    exec("def h(ex):\n    return {'y': ex['id'] + OFFSET}\n", namespace)
    before = hash_object(namespace["h"])
    namespace["OFFSET"] = 2
    assert hash_object(namespace["h"]) != before  # referenced global's value
    assert hash_object(lambda ex: {"y": ex["id"] + 1}) != hash_object(
        lambda ex: {"y": ex["id"] + 2})  # constant in the code

    def instance(body: str) -> object:
        ns: dict = {"__name__": "__main__"}
        exec(f"class Scale:\n    def __init__(self):\n        self.k = 2\n"
             f"    def __call__(self, ex):\n        return {body}\n", ns)
        return ns["Scale"]()

    one, same_code = instance("{'y': ex['id'] * self.k}"), instance("{'y': ex['id'] * self.k}")
    assert hash_object(one) == hash_object(same_code)
    assert hash_object(one) != hash_object(instance("{'y': ex['id'] + self.k}"))  # method edited
    same_code.k = 3
    assert hash_object(one) != hash_object(same_code)  # attribute value


def counter(path: Path):
    """A function that logs its calls to a file (its hash does not depend on the count)."""
    log = str(path)

    def plus(ex, k=1):
        with open(log, "a") as f:
            f.write("x")
        return {"y": ex["id"] + k}

    return plus, lambda: os.path.getsize(log) if os.path.exists(log) else 0


def test_cache_hit_and_miss_in_process(on_disk, tmp_path):
    plus, calls = counter(tmp_path / "calls")
    first = on_disk.map(plus)
    assert calls() == ROWS
    again = on_disk.map(plus)
    assert calls() == ROWS and again["y"][:] == first["y"][:]
    on_disk.map(plus, fn_kwargs={"k": 2})
    assert calls() == 2 * ROWS
    on_disk.map(plus, load_from_cache_file=False)
    assert calls() == 3 * ROWS
    in_memory = Dataset.from_dict(data())
    in_memory.map(plus)
    in_memory.map(plus)
    assert calls() == 5 * ROWS  # in-memory datasets are not cached (as datasets)
    assert in_memory.map(plus).cache_files == []


def test_unhashable_function_gets_a_warning_and_no_cache(on_disk, caplog):
    lock = threading.Lock()
    calls = []

    def locked(ex):
        with lock:
            calls.append(1)
        return {"y": 1}

    folder = Path(on_disk.cache_files[0]["filename"]).parent
    with caplog.at_level(logging.WARNING, logger="cove.datasets.fingerprint"):
        a = on_disk.map(locked)
        b = on_disk.map(locked)
    assert len(calls) == 2 * ROWS
    assert a._fingerprint != b._fingerprint
    warnings = [r.getMessage() for r in caplog.records if "could not be hashed" in r.getMessage()]
    assert len(warnings) == 2 and "\n" not in warnings[0] and "lock" in warnings[0]
    assert not list(folder.glob("cache-*"))  # results went to a temporary folder


def test_disable_caching(on_disk, tmp_path):
    f, calls = counter(tmp_path / "calls")
    disable_caching()
    assert not is_caching_enabled()
    on_disk.map(f)
    on_disk.map(f)
    assert calls() == 2 * ROWS
    assert not list(Path(on_disk.cache_files[0]["filename"]).parent.glob("cache-*"))
    enable_caching()
    on_disk.map(f)
    on_disk.map(f)
    assert calls() == 3 * ROWS


@pytest.mark.parametrize("style", ["new_columns", "return_batch", "return_row"])
def test_map_adding_a_column_caches_only_that_column(on_disk, style):
    data_bytes = os.path.getsize(on_disk.cache_files[0]["filename"])
    if style == "new_columns":
        out = on_disk.map(lambda b: {"n": [len(t) for t in b["text"]]}, batched=True)
    elif style == "return_batch":
        def add(batch):
            batch["n"] = [len(t) for t in batch["text"]]
            return batch
        out = on_disk.map(add, batched=True)
    else:
        def add(ex):
            ex["n"] = len(ex["text"])
            return ex
        out = on_disk.map(add)
    assert out["n"][:] == [len(t) for t in data()["text"]]
    assert out.column_names == ["id", "text", "tags", "n"]
    usage = cache_usage(out)
    assert len(usage["files"]) == 1
    # just the int64 column: 8 bytes a row plus the file's framing
    assert usage["num_bytes"] < 0.2 * data_bytes
    assert usage["num_bytes"] < ROWS * 8 + 2000


def test_unchanged_column_detection_handles_in_place_edits(on_disk):
    theirs = hf.Dataset.from_dict(data())

    def edit_batch(batch):
        batch["id"][0] = -1  # same list object, edited in place
        batch["tags"][1].append("z")
        return batch

    def edit_row(ex):
        ex["tags"].append("r")
        return ex

    def late_change(ex):  # unchanged for the first rows, changed later
        if ex["id"] >= 300:
            ex["id"] = -ex["id"]
        return ex

    for fn, kwargs in ((edit_batch, {"batched": True, "batch_size": 50}), (edit_row, {}),
                       (late_change, {"writer_batch_size": 100})):
        ours = on_disk.map(fn, **kwargs)
        assert ours[:] == theirs.map(fn, **kwargs)[:]
    # shard 0 leaves "id" as it is, shard 1 changes it: the shards store different columns
    two = on_disk.map(late_change, num_proc=2)
    assert two[:] == theirs.map(late_change)[:]
    assert two.features == on_disk.features


def test_batches_read_columns_lazily_with_the_same_results(on_disk):
    """Batched functions get columns converted on first read; the results must not show it."""
    theirs = hf.Dataset.from_dict(data())

    def overwrite_unread(batch):  # writes a column it never read
        batch["text"] = ["x"] * len(batch["id"])
        return batch

    def delete_and_add(batch):
        del batch["tags"]
        batch["n"] = [i + 1 for i in batch["id"]]
        return batch

    def later_batches_change(batch):  # returns "text" untouched at first, rewritten later
        if batch["id"][0] >= 200:
            batch["text"] = [t.upper() for t in batch["text"]]
        return batch

    def spread(batch):
        return {**batch, "m": [len(t) for t in batch["text"]]}

    def pop_row(ex):
        ex.pop("tags")
        ex["n"] = 1
        return ex

    assert on_disk.map(pop_row)[:] == theirs.map(pop_row)[:]
    for fn in (overwrite_unread, delete_and_add, later_batches_change, spread):
        ours = on_disk.map(fn, batched=True, batch_size=100)
        want = theirs.map(fn, batched=True, batch_size=100)
        assert ours.column_names == want.column_names, fn.__name__
        assert ours[:] == want[:], fn.__name__
    kept = on_disk.filter(lambda b: [i % 3 == 0 for i in b["id"]], batched=True)
    assert kept[:] == theirs.filter(lambda b: [i % 3 == 0 for i in b["id"]], batched=True)[:]


@pytest.mark.parametrize("backing", ["file", "memory"])
def test_num_proc_matches_a_single_process(tmp_path, backing):
    if backing == "file":
        Dataset.from_dict(data()).save_to_disk(tmp_path / "saved")
        ds = Dataset.load_from_disk(tmp_path / "saved")
    else:
        ds = Dataset.from_dict(data())

    def fn(batch, indices, rank):
        return {"n": [len(t) + i for t, i in zip(batch["text"], indices, strict=True)],
                "id": [i * 2 for i in batch["id"]]}

    one = ds.map(fn, batched=True, batch_size=64, with_indices=True, with_rank=True)
    four = ds.map(fn, batched=True, batch_size=64, with_indices=True, with_rank=True,
                  num_proc=4)
    assert four[:] == one[:] and four.features == one.features
    assert four.column_names == one.column_names
    even = ds.filter(lambda ex: ex["id"] % 2 == 0, num_proc=3)
    assert even["id"][:] == list(range(0, ROWS, 2))
    if backing == "file":
        names = sorted(Path(f["filename"]).name for f in four.cache_files[1:])
        assert len(names) == 4 and names[0].endswith("_00000_of_00004.arrow")
        again = ds.map(fn, batched=True, batch_size=64, with_indices=True, with_rank=True,
                       num_proc=4)
        assert again[:] == one[:]
    shuffled = ds.shuffle(seed=0)  # an indices mapping: every output column is written
    assert shuffled.map(fn, batched=True, with_indices=True, with_rank=True, num_proc=2)[:] == \
        shuffled.map(fn, batched=True, with_indices=True, with_rank=True)[:]


def test_num_proc_worker_error_reaches_the_caller(on_disk):
    def boom(ex):
        if ex["id"] == 350:
            raise RuntimeError("bad row 350")
        return {"y": 1}

    with pytest.raises(RuntimeError, match="bad row 350"):
        on_disk.map(boom, num_proc=2)
    folder = Path(on_disk.cache_files[0]["filename"]).parent
    assert not list(folder.glob("cache-*")) and not list(folder.glob(".tmp-*"))


def test_map_after_filter_and_cleanup(on_disk):
    kept = on_disk.filter(lambda ex: ex["id"] % 5 == 0)
    out = kept.map(lambda ex: {"y": ex["id"] + 1})
    assert out[:] == {"id": list(range(0, ROWS, 5)),
                      "text": [data()["text"][i] for i in range(0, ROWS, 5)],
                      "tags": [data()["tags"][i] for i in range(0, ROWS, 5)],
                      "y": [i + 1 for i in range(0, ROWS, 5)]}
    assert len(cache_usage(out)["files"]) == 2  # the filter's indices and the map's table
    assert on_disk.cleanup_cache_files() == 2
    assert cache_usage(on_disk)["files"] == []
    assert Dataset.from_dict({"a": [1]}).cleanup_cache_files() == 0


def _plus_one(batch):
    return {"b": [x + 1 for x in batch["id"]]}


def _times(factor):
    return lambda batch: {"id": [x * factor for x in batch["id"]]}


def test_the_formatting_transform_is_part_of_the_fingerprint(on_disk, tmp_path):
    # map/filter see the transformed batches (as datasets), so another transform on the same
    # data must not reuse the first one's cache file
    hf_ds = hf.Dataset.from_dict(data()).select(range(3))
    for factor in (10, 100):
        want_map = hf_ds.with_transform(_times(factor)).map(_plus_one, batched=True)
        want_filter = hf_ds.with_transform(_times(factor)).filter(
            lambda b: [x > 15 for x in b["id"]], batched=True)
        ds = on_disk.select(range(3)).with_transform(_times(factor))
        got_map = ds.map(_plus_one, batched=True)
        got_filter = ds.filter(lambda b: [x > 15 for x in b["id"]], batched=True)
        assert got_map.with_format(None)["b"] == want_map.with_format(None)["b"]
        assert len(got_filter) == len(want_filter)
