"""What killed writers and earlier saves leave behind: orphan temp files, stale split folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import datasets as hf
from cove.datasets import Dataset, DatasetDict, load_from_disk
from cove.datasets.writer import ORPHAN_MIN_AGE, ArrowWriter, write_arrow


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    monkeypatch.setenv("COVE_DATASETS_CACHE", str(tmp_path / "cove-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def temp_files(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


def backdate(path) -> None:
    """Make a file look older than ORPHAN_MIN_AGE (the guard for a writer's first instant)."""
    old = time.time() - ORPHAN_MIN_AGE - 3600
    os.utime(path, (old, old))


# -- orphan temp files ----------------------------------------------------------------------


def test_planted_orphans_are_swept_on_load_and_on_write(tmp_path):
    data = tmp_path / "data.arrow"
    write_arrow([{"a": [1, 2]}], str(data))
    orphan = tmp_path / ".tmp-abcd1234.arrow"
    orphan.write_bytes(b"half a file")
    backdate(orphan)
    fresh = tmp_path / ".tmp-fresh123.arrow"  # just created: its writer may be about to lock it
    fresh.write_bytes(b"")
    users = [tmp_path / ".tmp-notes.txt", tmp_path / ".tmp-mine.arrow"]  # not mkstemp's names
    for path in users:
        path.write_text("keep me")
        backdate(path)

    assert Dataset.from_file(str(data))["a"] == [1, 2]
    assert temp_files(tmp_path) == sorted([fresh.name] + [p.name for p in users])

    # writing a file into a folder sweeps it too, and so does load_from_disk
    backdate(fresh)
    write_arrow([{"a": [3]}], str(tmp_path / "other.arrow"))
    assert temp_files(tmp_path) == sorted(p.name for p in users)
    saved = tmp_path / "saved"
    Dataset.from_dict({"a": [1]}).save_to_disk(str(saved))
    (saved / ".tmp-zzzz9999.arrow").write_bytes(b"")
    backdate(saved / ".tmp-zzzz9999.arrow")
    assert load_from_disk(str(saved))["a"] == [1]
    assert temp_files(saved) == []


WRITER = textwrap.dedent("""
    import sys, time
    from cove.datasets.writer import ArrowWriter
    writer = ArrowWriter(sys.argv[1])
    writer.write_batch({"a": list(range(1000))})
    print("writing", flush=True)
    time.sleep(120)
""")


def test_a_killed_writers_temp_file_is_swept_but_not_a_live_ones(tmp_path):
    data = tmp_path / "data.arrow"
    write_arrow([{"a": [1]}], str(data))
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "out.arrow")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        (left,) = temp_files(tmp_path)
        backdate(tmp_path / left)  # old enough: only the writer's lock protects it now
        Dataset.from_file(str(data))
        assert temp_files(tmp_path) == [left]  # its writer is alive and holds the lock
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert temp_files(tmp_path) == [left]  # the kill left it
    Dataset.from_file(str(data))
    assert temp_files(tmp_path) == []
    assert not (tmp_path / "out.arrow").exists()


def test_a_temp_file_written_in_this_process_is_not_swept(tmp_path):
    # flock, unlike POSIX record locks, also excludes another descriptor of the same process
    writer = ArrowWriter(str(tmp_path / "out.arrow"))
    writer.write_batch({"a": [1, 2, 3]})
    (left,) = temp_files(tmp_path)
    backdate(tmp_path / left)
    write_arrow([{"a": [1]}], str(tmp_path / "data.arrow"))
    Dataset.from_file(str(tmp_path / "data.arrow"))
    assert temp_files(tmp_path) == [left]
    assert writer.finalize()["a"].to_pylist() == [1, 2, 3]
    assert temp_files(tmp_path) == []


# -- DatasetDict.save_to_disk over an earlier save --------------------------------------------


def test_dict_save_removes_the_splits_of_the_earlier_save_only(tmp_path):
    ds, hf_ds = Dataset.from_dict({"a": [1, 2, 3]}), hf.Dataset.from_dict({"a": [1, 2, 3]})
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(ours))
    hf.DatasetDict({"train": hf_ds, "test": hf_ds}).save_to_disk(str(theirs))
    for folder in (ours, theirs):
        (folder / "notes.txt").write_text("mine")
        (folder / "extra").mkdir()
    DatasetDict({"train": ds}).save_to_disk(str(ours))
    hf.DatasetDict({"train": hf_ds}).save_to_disk(str(theirs))

    # both list only the new split; datasets leaves the old folder, cove removes it
    assert json.loads((ours / "dataset_dict.json").read_text()) == \
        json.loads((theirs / "dataset_dict.json").read_text()) == {"splits": ["train"]}
    assert sorted(os.listdir(theirs)) == ["dataset_dict.json", "extra", "notes.txt", "test",
                                          "train"]
    assert sorted(os.listdir(ours)) == ["dataset_dict.json", "extra", "notes.txt", "train"]
    assert list(load_from_disk(str(ours))) == list(hf.load_from_disk(str(theirs))) == ["train"]
    assert load_from_disk(str(ours))["train"]["a"] == [1, 2, 3]


def test_dict_save_never_trusts_odd_split_names_or_removes_data_in_use(tmp_path):
    ds = Dataset.from_dict({"a": [1]})
    path = tmp_path / "dd"
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(path))
    outside = tmp_path / "outside"
    outside.mkdir()
    (path / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "../outside"]}))
    DatasetDict({"train": ds}).save_to_disk(str(path))
    assert outside.is_dir() and (path / "test").is_dir()  # "test" was not listed this time

    # the new train split is the old test split, read from its folder: that folder stays
    DatasetDict({"train": ds, "test": Dataset.from_dict({"a": [2]})}).save_to_disk(str(path))
    loaded = load_from_disk(str(path))
    DatasetDict({"train": loaded["test"]}).save_to_disk(str(path))
    assert (path / "test").is_dir()
    assert load_from_disk(str(path))["train"]["a"] == [2]


def test_a_failed_dict_save_keeps_the_earlier_one_loadable(tmp_path, monkeypatch):
    ds = Dataset.from_dict({"a": [1]})
    path = tmp_path / "dd"
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(path))
    real = Dataset.save_to_disk

    def fail_on_validation(self, dataset_path, **kwargs):
        if os.path.basename(dataset_path) == "validation":
            raise OSError("disk full")
        return real(self, dataset_path, **kwargs)

    monkeypatch.setattr(Dataset, "save_to_disk", fail_on_validation)
    with pytest.raises(OSError, match="disk full"):
        DatasetDict({"train": Dataset.from_dict({"a": [5]}),
                     "validation": ds}).save_to_disk(str(path))
    loaded = load_from_disk(str(path))  # the earlier listing, with its test folder, still holds
    assert list(loaded) == ["train", "test"] and loaded["test"]["a"] == [1]
