"""Hub datasets end to end against a live `cove serve`: load by id, push_to_hub, reload in a
fresh process (also streaming), and the real `datasets` reading what Cove pushed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cove.datasets import DatasetNotFoundError, load_dataset
from cove.hub import HubApi, RepositoryNotFoundError
from tests.server.conftest import seeded_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    base = tmp_path_factory.mktemp("hub-datasets")
    live = seeded_server(base / "server")
    env = {
        "COVE_ENDPOINT": live.url, "HF_ENDPOINT": live.url,
        "COVE_TOKEN": live.accounts.alice_write, "COVE_HOME": str(base / "home"),
        "COVE_HUB_CACHE": str(base / "hub-cache"), "COVE_DATASETS_CACHE": str(base / "ds-cache"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "COVE_DISABLE_PROGRESS_BARS": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        live.env = env
        live.base = base
        yield live
    live.stop()


@pytest.fixture(scope="module")
def api(hub) -> HubApi:
    return HubApi(endpoint=hub.url, token=hub.accounts.alice_write)


def run_fresh(hub, code: str, extra_env: dict | None = None) -> dict:
    """Run `code` in a new Python process against the server; it prints one JSON line."""
    env = {**{k: v for k, v in os.environ.items() if k != "HF_DATASETS_OFFLINE"}, **hub.env,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT,
           "COVE_DATASETS_CACHE": str(hub.base / f"fresh-{os.urandom(4).hex()}"),
           **(extra_env or {})}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- loading repositories by id -------------------------------------------------------------


def test_load_repo_by_id_pinned_to_commits(hub, api, tmp_path):
    api.create_repo("alice/raw-csv", repo_type="dataset")
    folder = tmp_path / "raw"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.csv").write_text("a,b\n1,x\n2,y\n")
    (folder / "data" / "test.csv").write_text("a,b\n3,z\n")
    (folder / "README.md").write_text("# raw csv\n")
    first = api.upload_folder(repo_id="alice/raw-csv", folder_path=folder, repo_type="dataset",
                              commit_message="csv files")
    dd = load_dataset("alice/raw-csv")
    assert list(dd) == ["train", "test"]
    assert dd["train"].to_list() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]

    (folder / "data" / "train.csv").write_text("a,b\n10,new\n")
    api.upload_folder(repo_id="alice/raw-csv", folder_path=folder, repo_type="dataset",
                      commit_message="new train")
    assert load_dataset("alice/raw-csv", split="train")["a"] == [10]  # new commit, new cache
    old = load_dataset("alice/raw-csv", split="train", revision=first.oid)
    assert old["a"] == [1, 2]
    streamed = load_dataset("alice/raw-csv", split="train", streaming=True)
    assert list(streamed) == [{"a": 10, "b": "new"}]


def test_hf_paths_in_data_files(hub, api):
    api.create_repo("alice/hf-paths", repo_type="dataset")
    for name, text in {"data/a.jsonl": '{"v": 1}\n', "data/b.jsonl": '{"v": 2}\n',
                       "other/c.jsonl": '{"v": 3}\n'}.items():
        api.upload_file(path_or_fileobj=text.encode(), path_in_repo=name,
                        repo_id="alice/hf-paths", repo_type="dataset")
    ds = load_dataset("json", data_files="hf://datasets/alice/hf-paths/data/*.jsonl",
                      split="train")
    assert ds["v"] == [1, 2]
    dd = load_dataset("json", data_files={"train": "hf://datasets/alice/hf-paths@main/data/*",
                                          "test": "hf://datasets/alice/hf-paths/other/c.jsonl"})
    assert {s: d["v"] for s, d in dd.items()} == {"train": [1, 2], "test": [3]}
    streamed = load_dataset("json", data_files="hf://datasets/alice/hf-paths/other/*.jsonl",
                            split="train", streaming=True)
    assert list(streamed) == [{"v": 3}]
    with pytest.raises(ValueError, match="one dataset repository"):
        load_dataset("json", data_files=["hf://datasets/alice/hf-paths/data/a.jsonl",
                                         "hf://datasets/alice/other/x.jsonl"])


def test_offline_uses_the_latest_prepared_copy(hub, api, monkeypatch):
    api.create_repo("alice/offline", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a\n1\n2\n", path_in_repo="train.csv",
                    repo_id="alice/offline", repo_type="dataset")
    assert load_dataset("alice/offline", split="train")["a"] == [1, 2]
    monkeypatch.setenv("COVE_OFFLINE", "1")
    dd = load_dataset("alice/offline")
    assert list(dd) == ["train"] and dd["train"]["a"] == [1, 2]
    with pytest.raises(ConnectionError, match="Couldn't reach 'alice/never-loaded'.*no "
                                              "prepared copy"):
        load_dataset("alice/never-loaded")
    with pytest.raises(ConnectionError, match="streaming needs the Hub"):
        load_dataset("alice/offline", streaming=True)


def test_hub_errors(hub, api):
    with pytest.raises(DatasetNotFoundError, match="'alice/absent' doesn't exist on the Hub"):
        load_dataset("alice/absent")
    api.create_repo("alice/revs", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a\n1\n", path_in_repo="train.csv", repo_id="alice/revs",
                    repo_type="dataset")
    with pytest.raises(DatasetNotFoundError, match="Revision 'nope' doesn't exist"):
        load_dataset("alice/revs", revision="nope")
    api.create_repo("alice/private-data", repo_type="dataset", private=True)
    api.upload_file(path_or_fileobj=b"a\n1\n", path_in_repo="train.csv",
                    repo_id="alice/private-data", repo_type="dataset")
    assert load_dataset("alice/private-data", split="train")["a"] == [1]
    with pytest.raises(DatasetNotFoundError):
        load_dataset("alice/private-data", token=False)


def test_url_data_files(hub, api):
    """data_files as resolve URLs: read over HTTP, with the token only for the Hub's URLs."""
    from cove.hub import file_url

    api.create_repo("alice/private-urls", repo_type="dataset", private=True)
    api.upload_file(path_or_fileobj=b"a,b\n1,x\n2,y\n", path_in_repo="t.csv",
                    repo_id="alice/private-urls", repo_type="dataset")
    url = file_url("alice/private-urls", "t.csv", repo_type="dataset")
    assert load_dataset("csv", data_files=url, split="train")["b"] == ["x", "y"]
    assert [r["a"] for r in load_dataset("csv", data_files={"test": url}, split="test",
                                         streaming=True)] == [1, 2]
    with pytest.raises(RepositoryNotFoundError):  # token=False: the URL gets no token
        load_dataset("csv", data_files=url, split="train", token=False,
                     download_mode="force_redownload")


def test_real_datasets_reads_a_cove_repo(hub, api):
    """The real datasets.load_dataset, pointed at the Cove server with HF_ENDPOINT."""
    api.create_repo("alice/for-hf", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,x\n2,y\n", path_in_repo="data/train.csv",
                    repo_id="alice/for-hf", repo_type="dataset")
    pytest.importorskip("datasets")
    got = run_fresh(hub, """
        import json, datasets
        d = datasets.load_dataset("alice/for-hf")
        print(json.dumps({s: d[s].to_list() for s in d}))
    """, {"HF_TOKEN": hub.accounts.alice_write, "HF_HOME": str(hub.base / "hf-home"),
          "HF_HUB_DISABLE_XET": "1"})
    assert got == {"train": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}


# -- push_to_hub ----------------------------------------------------------------------------


def sample_dict():
    from cove.datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"]),
                         "tokens": List(Value("int32")), "score": Value("float32")})
    train = Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [1, 0, 1],
                               "tokens": [[1, 2], [3], []], "score": [0.5, 1.5, 2.5]},
                              features=features)
    test = Dataset.from_dict({"text": ["meh"], "label": [0], "tokens": [[4, 5, 6]],
                              "score": [3.0]}, features=features)
    return DatasetDict({"train": train, "test": test}), features


def card_of(api, repo_id: str) -> tuple[dict, str]:
    from cove.datasets.data_files import read_card_metadata

    path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset")
    text = open(path, encoding="utf-8").read()
    return read_card_metadata(text), text


def test_push_then_load_in_a_fresh_process(hub, api):
    dd, features = sample_dict()
    info = dd.push_to_hub("alice/pushed")
    assert info.oid
    files = sorted(api.list_repo_files("alice/pushed", repo_type="dataset"))
    assert files == [".gitattributes", "README.md", "data/test-00000-of-00001.parquet",
                     "data/train-00000-of-00001.parquet"] or files == [
        "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    meta, _ = card_of(api, "alice/pushed")
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]}]
    hf = pytest.importorskip("datasets")
    hf_features = hf.Features.from_dict(features.to_dict())
    assert meta["dataset_info"]["features"] == hf_features._to_yaml_list()
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == {
        "train": 3, "test": 1}

    code = """
        import json
        from cove.datasets import load_dataset
        d = load_dataset("alice/pushed"{extra})
        print(json.dumps({{"rows": {{s: list(d[s]) for s in d}},
                          "features": d["train"].features.to_dict()}}))
    """
    got = run_fresh(hub, code.format(extra=""))
    assert got["rows"] == {s: dd[s].to_list() for s in dd}
    assert got["features"] == features.to_dict()
    streamed = run_fresh(hub, code.format(extra=", streaming=True"))
    assert streamed["rows"] == got["rows"]
    assert streamed["features"] == features.to_dict()


def test_real_datasets_reads_a_cove_push(hub):
    """datasets.load_dataset on what Cove's push_to_hub wrote (same rows and features)."""
    from cove.datasets.hub import push_to_hub

    dd, features = sample_dict()
    push_to_hub(dd, "alice/pushed-for-hf")
    pytest.importorskip("datasets")
    got = run_fresh(hub, """
        import json, datasets
        d = datasets.load_dataset("alice/pushed-for-hf")
        print(json.dumps({"rows": {s: d[s].to_list() for s in d},
                          "features": d["train"].features.to_dict()}))
    """, {"HF_TOKEN": hub.accounts.alice_write, "HF_HOME": str(hub.base / "hf-home2"),
          "HF_HUB_DISABLE_XET": "1"})
    assert got["rows"] == {s: dd[s].to_list() for s in dd}
    assert got["features"] == features.to_dict()


def test_push_split_by_split_keeps_card_and_splits(hub, api):
    from cove.datasets import Dataset
    from cove.datasets.hub import push_to_hub

    api.create_repo("alice/incremental", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n# My data\n\nHand-written.\n",
                    path_in_repo="README.md", repo_id="alice/incremental", repo_type="dataset")
    Dataset.from_dict({"x": list(range(10))}).push_to_hub("alice/incremental", split="train")
    push_to_hub(Dataset.from_dict({"x": [100, 101]}), "alice/incremental", split="validation")
    meta, text = card_of(api, "alice/incremental")
    assert text.endswith("# My data\n\nHand-written.\n") and meta["license"] == "mit"
    assert [f["split"] for f in meta["configs"][0]["data_files"]] == ["train", "validation"]
    assert [s["name"] for s in meta["dataset_info"]["splits"]] == ["train", "validation"]

    push_to_hub(Dataset.from_dict({"x": list(range(20, 26))}), "alice/incremental",
                split="train", num_shards=2)
    files = api.list_repo_files("alice/incremental", repo_type="dataset")
    assert sorted(f for f in files if f.startswith("data/")) == [
        "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
        "data/validation-00000-of-00001.parquet"]
    dd = load_dataset("alice/incremental")
    assert list(dd) == ["train", "validation"]
    assert dd["train"]["x"] == list(range(20, 26)) and dd["validation"]["x"] == [100, 101]


def test_push_configs(hub, api):
    from cove.datasets import Dataset, get_dataset_config_names
    from cove.datasets.hub import push_to_hub

    push_to_hub(Dataset.from_dict({"a": [1]}), "alice/configs")
    push_to_hub(Dataset.from_dict({"b": ["x", "y"]}), "alice/configs", config_name="extra",
                split="test")
    files = api.list_repo_files("alice/configs", repo_type="dataset")
    assert "extra/test-00000-of-00001.parquet" in files
    assert get_dataset_config_names("alice/configs") == ["default", "extra"]
    assert load_dataset("alice/configs", "extra", split="test")["b"] == ["x", "y"]
    assert load_dataset("alice/configs", split="train")["a"] == [1]
    meta, _ = card_of(api, "alice/configs")
    assert [i["config_name"] for i in meta["dataset_info"]] == ["default", "extra"]
    with pytest.raises(ValueError, match=r"'nope' not found. Available: \['default', 'extra'\]"):
        load_dataset("alice/configs", "nope")
    push_to_hub(Dataset.from_dict({"b": ["z"]}), "alice/configs", config_name="extra",
                split="train", set_default=True)
    meta, _ = card_of(api, "alice/configs")
    assert [c.get("default", False) for c in meta["configs"]] == [False, True]
    assert list(load_dataset("alice/configs")) == ["test", "train"]  # the default: extra


def test_push_to_a_branch(hub, api):
    from cove.datasets import Dataset

    Dataset.from_dict({"v": [1]}).push_to_hub("alice/branched")
    Dataset.from_dict({"v": [2, 3]}).push_to_hub("alice/branched", revision="v2")
    assert load_dataset("alice/branched", split="train")["v"] == [1]
    assert load_dataset("alice/branched", split="train", revision="v2")["v"] == [2, 3]


def test_push_bad_arguments(hub):
    from cove.datasets import Dataset
    from cove.datasets.hub import push_to_hub

    ds = Dataset.from_dict({"a": [1]})
    with pytest.raises(ValueError, match="Split name 'bad split'"):
        push_to_hub(ds, "alice/bad", split="bad split")
    with pytest.raises(ValueError, match="max_shard_size"):
        push_to_hub(ds, "alice/bad", max_shard_size="lots")
    push_to_hub(ds, "alice/typed", split="train")
    with pytest.raises(ValueError, match=r"features of the pushed split\(s\) \['test'\] don't "
                                         r"match those of the split\(s\) \['train'\]"):
        push_to_hub(Dataset.from_dict({"a": ["text"]}), "alice/typed", split="test")


def test_cove_loads_what_real_datasets_pushed(hub):
    """The other direction: datasets.push_to_hub to the Cove server, cove's load_dataset."""
    pytest.importorskip("datasets")
    pushed = run_fresh(hub, """
        import json, datasets
        f = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"]),
                               "tokens": datasets.List(datasets.Value("int32"))})
        d = datasets.DatasetDict({
            "train": datasets.Dataset.from_dict(
                {"text": ["a", "b"], "label": [0, 1], "tokens": [[1], []]}, features=f),
            "test": datasets.Dataset.from_dict(
                {"text": ["c"], "label": [1], "tokens": [[2, 3]]}, features=f)})
        d.push_to_hub("alice/from-hf")
        datasets.Dataset.from_dict({"x": [1]}).push_to_hub("alice/from-hf", config_name="extra")
        print(json.dumps({"rows": {s: d[s].to_list() for s in d},
                          "features": f.to_dict()}))
    """, {"HF_TOKEN": hub.accounts.alice_write, "HF_HOME": str(hub.base / "hf-home3"),
          "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    dd = load_dataset("alice/from-hf")
    assert {s: dd[s].to_list() for s in dd} == pushed["rows"]
    assert dd["train"].features.to_dict() == pushed["features"]
    assert load_dataset("alice/from-hf", "extra", split="train")["x"] == [1]


def test_private_push(hub, api):
    from cove.datasets import Dataset

    Dataset.from_dict({"s": ["secret"]}).push_to_hub("alice/private-push", private=True,
                                                     commit_message="private data")
    assert api.dataset_info("alice/private-push").private is True
    assert api.list_repo_commits("alice/private-push", repo_type="dataset")[0].title == \
        "private data"
    assert load_dataset("alice/private-push", split="train")["s"] == ["secret"]
    with pytest.raises(DatasetNotFoundError):
        load_dataset("alice/private-push", token=False)


def test_card_features_match_datasets_yaml():
    """features_to_yaml / features_from_yaml against datasets' _to_yaml_list / _from_yaml_list."""
    from cove.datasets import Features
    from cove.datasets.hub import features_from_yaml, features_to_yaml

    hf = pytest.importorskip("datasets")
    theirs = hf.Features({
        "t": hf.Value("string"), "l": hf.ClassLabel(names=["a", "b"]),
        "s": hf.List(hf.Value("int32")), "ll": hf.LargeList(hf.Value("float32")),
        "fixed": hf.List(hf.Value("int8"), length=3),
        "nested": {"x": hf.Value("int64"), "y": hf.List({"z": hf.Value("string")})},
        "arr": hf.Array2D(shape=(2, 3), dtype="float32"),
        "lol": hf.List(hf.List(hf.Value("string"))),
    })
    yaml_list = theirs._to_yaml_list()
    ours = Features.from_dict(theirs.to_dict())
    assert features_to_yaml(ours.to_dict()) == yaml_list
    assert Features.from_dict(features_from_yaml(yaml_list)) == ours
    old_sequence = [{"name": "seq", "sequence": "int64"},
                    {"name": "pairs", "sequence": [{"name": "a", "dtype": "string"}]}]
    assert features_from_yaml(old_sequence) == hf.Features._from_yaml_list(old_sequence).to_dict()
