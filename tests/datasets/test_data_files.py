"""data_files resolution and the Hub's split naming conventions, against datasets."""

from __future__ import annotations

import os

import pytest

from cove.datasets.data_files import (
    card_configs,
    glob_local,
    infer_split_patterns,
    match_paths,
    read_card_metadata,
    resolve_patterns,
    sanitize_patterns,
    select_config,
)
from cove.datasets.errors import DataFilesNotFoundError
from tests.datasets.load_oracle import oracle

LAYOUTS = {
    "one file": ["dataset.csv"],
    "split files": ["train.csv", "test.csv", "README.md"],
    "data folder": ["data/train.csv", "data/test.csv", "data/validation.csv"],
    "shards": ["train_0.csv", "train_1.csv", "test_0.csv"],
    "keywords": ["my-train-file.csv", "dev.csv", "eval_set.csv", "x_testing.csv"],
    "no keyword boundary": ["pretrain.csv", "contest.csv"],
    "split folders": ["data/train/a.csv", "data/train/b.csv", "data/test/c.csv"],
    "folder keywords": ["train-part/x.csv", "valid/y.csv"],
    "sharded data": ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                     "data/test-00000-of-00001.parquet", "data/custom-00000-of-00001.parquet"],
    "hidden": ["train.csv", ".cache/test.csv", "__pycache__/valid.csv", "notes/.hidden.csv"],
    "nested files": ["a/b/train.jsonl", "a/b/test.jsonl", "a/other.jsonl"],
}


def make(root, files) -> str:
    for f in files:
        path = os.path.join(root, f)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write("a\n1\n")
    return str(root)


def resolved(patterns: dict, base: str) -> dict:
    return resolve_patterns(patterns, lambda p: glob_local(p, base))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_split_inference_matches_datasets(tmp_path, layout):
    hf = oracle()
    from datasets.data_files import DataFilesDict, get_data_patterns

    base = make(tmp_path, LAYOUTS[layout])
    theirs_patterns = get_data_patterns(base)
    theirs = DataFilesDict.from_patterns(theirs_patterns, base_path=base)
    rel = [os.path.relpath(os.path.join(d, f), base).replace(os.sep, "/")
           for d, _, fs in os.walk(base) for f in fs]
    ours = resolve_patterns(infer_split_patterns(rel), lambda p: glob_local(p, base), unique=True)
    assert list(ours) == list(theirs)
    assert {s: sorted(fs) for s, fs in ours.items()} == {
        s: sorted(str(f) for f in fs) for s, fs in theirs.items()}
    assert hf  # the oracle ran


@pytest.mark.parametrize("patterns", [
    "*.csv", ["data/*.csv"], {"train": "data/train.csv", "test": ["data/test.csv"]},
    "**", "data/**", "**/*.csv", "data/t*.csv", "data/[tv]*.csv", "data/[!t]*.csv",
])
def test_explicit_patterns_match_datasets(tmp_path, patterns):
    oracle()
    from datasets.data_files import DataFilesDict
    from datasets.data_files import sanitize_patterns as hf_sanitize

    base = make(tmp_path, ["top.csv", "data/train.csv", "data/test.csv", "data/valid.csv",
                           "data/deep/more.csv", "README.md", ".hidden.csv"])
    theirs = DataFilesDict.from_patterns(hf_sanitize(patterns), base_path=base)
    ours = resolved(sanitize_patterns(patterns), base)
    assert {s: sorted(fs) for s, fs in ours.items()} == {
        s: sorted(str(f) for f in fs) for s, fs in theirs.items()}


def test_absolute_and_missing_patterns(tmp_path):
    base = make(tmp_path, ["d/a.csv", "d/b.csv"])
    absolute = os.path.join(base, "d", "*.csv")
    assert glob_local(absolute, "/elsewhere") == [os.path.join(base, "d", "a.csv"),
                                                  os.path.join(base, "d", "b.csv")]
    with pytest.raises(DataFilesNotFoundError, match="Unable to find 'd/missing.csv'"):
        resolved({"train": ["d/missing.csv"]}, base)
    with pytest.raises(DataFilesNotFoundError, match=r"split 'test' matching '\*\.parquet'"):
        resolved({"train": ["d/*.csv"], "test": ["*.parquet"]}, base)


def test_sanitize_forms():
    assert sanitize_patterns("a.csv") == {"train": ["a.csv"]}
    assert sanitize_patterns(["a", "b"]) == {"train": ["a", "b"]}
    assert sanitize_patterns([{"split": "train", "path": "t/*"},
                              {"split": "test", "path": ["x", "y"]}]) == {
        "train": ["t/*"], "test": ["x", "y"]}
    with pytest.raises(TypeError):
        sanitize_patterns(3)


def test_match_paths_for_repo_listings():
    paths = ["README.md", "data/train-00000-of-00001.parquet", "sub/deep/x.csv", ".gitattributes"]
    assert match_paths("**", paths) == ["data/train-00000-of-00001.parquet", "sub/deep/x.csv"]
    assert match_paths("README.md", paths) == ["README.md"]
    assert match_paths("*/*.csv", paths) == []
    assert match_paths("sub/**/*.csv", paths) == ["sub/deep/x.csv"]


CARD = """---
license: mit
configs:
- config_name: first
  data_files:
  - split: train
    path: first/train-*
  sep: ";"
- config_name: second
  default: true
  data_files: second/*.csv
dataset_info:
  config_name: first
  features:
  - name: a
    dtype: int64
---
# Card body
"""


def test_card_configs():
    meta = read_card_metadata(CARD)
    configs = card_configs(meta)
    assert [c["config_name"] for c in configs] == ["first", "second"]
    assert select_config(configs, None)["config_name"] == "second"  # default: true
    assert select_config(configs, "first")["sep"] == ";"
    with pytest.raises(ValueError, match=r"'third' not found. Available: \['first', 'second'\]"):
        select_config(configs, "third")
    with pytest.raises(ValueError, match="Config name is missing"):
        select_config(configs[:1] + [dict(configs[1], default=False)], None)
    assert read_card_metadata("# no front matter") == {}
