"""push_to_hub: a Dataset or DatasetDict as Parquet shards plus a dataset card, in one commit.

The layout is datasets': `data/<split>-00000-of-00002.parquet` (`<config>/<split>-...` for a
config other than "default") and a README.md whose YAML front matter lists the config's
data files per split and its `dataset_info` (features in the card's YAML form, split sizes).
Pushing one split keeps the others already in the repository; the card's body is kept.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from cove.datasets.data_files import read_card_metadata
from cove.datasets.splits import SPLIT_NAME

if TYPE_CHECKING:
    from cove.datasets.arrow_dataset import Dataset
    from cove.datasets.dataset_dict import DatasetDict

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_NOT_VALUES = {"image", "audio", "video", "pdf", "nifti"}  # dtype strings that are not Values


# -- features in the card's YAML form -------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def features_to_yaml(features: dict) -> list:
    """Serialized features (Features.to_dict()) in the dataset card's list form."""
    return _plain([{"name": name, **_to_yaml(feature)} for name, feature in features.items()])


def _plain(obj: Any) -> Any:
    """Tuples as lists, so that the card is plain YAML."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _simplify(key: str, inner: dict, rest: dict) -> dict:
    """{key: int64} for a list of Values, {key: [fields]} for a list of structs."""
    if list(inner) == ["dtype"] and isinstance(inner["dtype"], str):
        return {key: inner["dtype"], **rest}
    if list(inner) == ["struct"]:
        return {key: inner["struct"], **rest}
    return {key: inner, **rest}


def _to_yaml(feature: Any) -> dict:
    if isinstance(feature, list):  # the old Sequence form [feature]
        return _simplify("list", _to_yaml(feature[0]), {})
    if not isinstance(feature, dict):
        raise TypeError(f"Can't write feature {feature!r} in a dataset card.")
    kind = feature.get("_type")
    rest = {k: v for k, v in feature.items() if k not in ("_type", "feature")}
    if kind in ("List", "LargeList", "Sequence"):
        key = "large_list" if kind == "LargeList" else "list"
        return _simplify(key, _to_yaml(feature["feature"]), rest)
    if kind == "Value":
        return {"dtype": feature["dtype"]}
    if kind == "ClassLabel":
        names = {str(i): n for i, n in enumerate(feature.get("names") or [])}
        return {"dtype": {"class_label": {"names": names}}}
    if kind:
        return {"dtype": _snake(kind) if not rest else {_snake(kind): rest}}
    return {"struct": [{"name": k, **_to_yaml(v)} for k, v in feature.items()]}


def features_from_yaml(items: list) -> dict:
    """The card's features list as the serialized dict Features.from_dict() reads."""
    if not isinstance(items, list):
        raise ValueError(f"The card's dataset_info features must be a list, got {items!r}.")
    out = {}
    for item in items:
        if not isinstance(item, dict) or "name" not in item:
            raise ValueError(f"Each card feature needs a name, got {item!r}.")
        out[item["name"]] = _from_yaml({k: v for k, v in item.items() if k != "name"})
    return out


def _from_yaml_inner(value: Any) -> Any:
    if isinstance(value, str):
        return {"dtype": value, "_type": "Value"}
    if isinstance(value, list):
        return features_from_yaml(value)
    return _from_yaml(value)


def _from_yaml(obj: dict) -> Any:
    for key, kind in (("list", "List"), ("large_list", "LargeList"), ("sequence", "List")):
        if key in obj:
            rest = {k: v for k, v in obj.items() if k != key}
            inner = obj[key]
            if key == "sequence" and isinstance(inner, list):  # old form: dict of lists
                return {name: {"feature": sub, **rest, "_type": "List"}
                        for name, sub in features_from_yaml(inner).items()}
            return {"feature": _from_yaml_inner(inner), **rest, "_type": kind}
    if "struct" in obj:
        return features_from_yaml(obj["struct"])
    if "dtype" in obj:
        dtype = obj["dtype"]
        if isinstance(dtype, str):
            return {"_type": _camel(dtype)} if dtype in _NOT_VALUES else {"dtype": dtype,
                                                                          "_type": "Value"}
        (kind, params), = dtype.items()
        if kind == "class_label":
            names = params.get("names")
            if isinstance(names, dict):
                ids = sorted(names, key=int)
                if [int(i) for i in ids] != list(range(len(ids))):
                    raise ValueError(f"ClassLabel names in the card miss some ids: {ids}.")
                names = [names[i] for i in ids]
            return {"names": names, "_type": "ClassLabel"}
        return {**(params or {}), "_type": _camel(kind)}
    raise ValueError(f"Can't read card feature {obj!r}.")


# -- pushing --------------------------------------------------------------------------------


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"max_shard_size={size!r} is not a size like '500MB' or 10_000_000.")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def _table(dataset: Dataset, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of the dataset as Arrow (its indices mapping applied)."""
    return dataset.with_format("arrow")[start:stop]


def _card_yaml(metadata: dict) -> str:
    return yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)


def _merge_card(old_text: str | None, config_name: str, data_dir: str,
                splits: dict[str, dict], features: dict, download_size: int,
                set_default: bool | None = None) -> str:
    """The new README.md: the old body and metadata with this config's splits merged in.

    Splits of the config that are not pushed again must have the same features.
    """
    body = ""
    metadata: dict = {}
    if old_text:
        metadata = read_card_metadata(old_text)
        m = re.match(r"\A\ufeff?---\s*\n.*?\n---\s*(?:\n|\Z)", old_text, re.S)
        body = old_text[m.end():] if m else old_text
    # configs: this config's data files, one pattern per split, the other splits kept
    configs = [c for c in metadata.get("configs") or [] if isinstance(c, dict)]
    config = next((c for c in configs if c.get("config_name") == config_name), None)
    if config is None:
        config = {"config_name": config_name, "data_files": []}
        configs.append(config)
    files = config.get("data_files") or []
    if not (isinstance(files, list) and all(isinstance(f, dict) for f in files)):
        files = []  # a plain pattern form: replaced by the per-split form
    entries = {f["split"]: f for f in files if isinstance(f, dict) and "split" in f}
    for split in splits:
        entries[split] = {"split": split, "path": f"{data_dir}/{split}-*"}
    config["data_files"] = list(entries.values())
    if set_default:
        for c in configs:
            c.pop("default", None)
        config["default"] = True
    # dataset_info: this config's features and split sizes, the other configs kept
    infos = metadata.get("dataset_info") or []
    infos = [infos] if isinstance(infos, dict) else [i for i in infos if isinstance(i, dict)]
    info = next((i for i in infos if i.get("config_name", "default") == config_name), None)
    if info is None:
        info = {"config_name": config_name}
        infos.append(info)
    split_list = {s["name"]: s for s in info.get("splits") or [] if isinstance(s, dict)}
    others = [name for name in split_list if name not in splits]
    if others and info.get("features") and info["features"] != features_to_yaml(features):
        raise ValueError(f"The features of the pushed split(s) {list(splits)} don't match those "
                         f"of the split(s) {others} already in config '{config_name}': cast "
                         f"them to the same features, or push to another config_name.")
    for split, sizes in splits.items():
        split_list[split] = {"name": split, "num_bytes": sizes["num_bytes"],
                             "num_examples": sizes["num_examples"]}
    info.update({
        "config_name": config_name,
        "features": features_to_yaml(features),
        "splits": list(split_list.values()),
        "download_size": download_size,
        "dataset_size": sum(s["num_bytes"] for s in split_list.values()),
    })
    # one config: a mapping (config_name only when not "default"); several: a list by name
    infos = [{"config_name": i.get("config_name", "default"),
              **{k: v for k, v in i.items() if k != "config_name"}} for i in infos]
    if len(infos) == 1:
        single = infos[0]
        if single["config_name"] == "default":
            single.pop("config_name")
        metadata["dataset_info"] = single
    else:
        metadata["dataset_info"] = sorted(infos, key=lambda i: i["config_name"])
    metadata["configs"] = configs  # after dataset_info in a new card, as datasets writes
    return f"---\n{_card_yaml(metadata)}---\n{body}"


def push_to_hub(
    dataset_or_dict: Dataset | DatasetDict,
    repo_id: str,
    config_name: str = "default",
    set_default: bool | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool | None = False,
    max_shard_size: int | str | None = None,
    num_shards: int | dict[str, int] | None = None,
) -> Any:
    """Upload the dataset (every split of a DatasetDict) as Parquet shards with a card.

    Returns the CommitInfo of the single commit. Earlier shards of the pushed splits are
    deleted; other splits and configs stay.
    """
    from cove.hub import CommitOperationAdd, CommitOperationDelete, HubApi, hf_hub_download
    from cove.hub.errors import EntryNotFoundError

    if not isinstance(repo_id, str) or not repo_id.strip("/"):
        raise ValueError(f"repo_id must be 'namespace/name' or 'name', got {repo_id!r}.")
    if not re.fullmatch(r"[\w.-]+", config_name) or config_name in ("data",):
        raise ValueError(f"config_name {config_name!r} must be letters, digits, '-', '_' or "
                         f"'.' (and not 'data').")
    if hasattr(dataset_or_dict, "keys") and hasattr(dataset_or_dict, "values"):
        if split is not None:
            raise ValueError("split= applies to a Dataset; a DatasetDict pushes all its splits.")
        to_push = dict(dataset_or_dict)
    else:
        name = split or getattr(dataset_or_dict, "split", None) or "train"
        to_push = {str(name): dataset_or_dict}
    for name in to_push:
        if not re.fullmatch(SPLIT_NAME, name):
            raise ValueError(f"Split name {name!r} must match {SPLIT_NAME!r} (letters, digits, "
                             f"'_', and '.' between words).")
    if not to_push:
        raise ValueError("Nothing to push: the DatasetDict has no split.")
    data_dir = (data_dir or ("data" if config_name == "default" else config_name)).strip("/")
    shard_bytes = _parse_size(max_shard_size or "500MB")

    api = HubApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision is not None and revision != "main":  # a new branch starts at main's head
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    existing = {e.path: e.size for e in api.list_repo_tree(
        repo_id, recursive=True, repo_type="dataset", revision=revision) if hasattr(e, "size")}
    features = next(iter(to_push.values())).features
    for split, ds in to_push.items():
        if ds.features != features:
            raise ValueError(f"All splits must have the same features to be pushed as one "
                             f"config; split {split!r} has {ds.features}, not {features}.")
    additions, deletions, sizes = [], [], {}
    with tempfile.TemporaryDirectory(prefix="cove-push-") as tmp:
        for split, ds in to_push.items():
            n = len(ds)
            nbytes = ds._estimated_nbytes()
            wanted = num_shards.get(split) if isinstance(num_shards, dict) else num_shards
            count = wanted or math.ceil(nbytes / shard_bytes)
            count = max(1, min(count, n))
            download = 0
            new_paths = set()
            schema = _parquet_schema(ds)
            for i in range(count):
                start, stop = n * i // count, n * (i + 1) // count
                local = os.path.join(tmp, f"{split}-{i:05d}.parquet")
                table = _table(ds, start, stop) if n else schema.empty_table()
                pq.write_table(table.replace_schema_metadata(schema.metadata), local)
                download += os.path.getsize(local)
                path = f"{data_dir}/{split}-{i:05d}-of-{count:05d}.parquet"
                new_paths.add(path)
                additions.append(CommitOperationAdd(path, local))
            stale = re.compile(rf"^{re.escape(data_dir)}/{re.escape(split)}-\d{{5}}-of-\d{{5}}"
                               r"[^/]*\.parquet$")
            deletions += [CommitOperationDelete(p) for p in existing
                          if stale.match(p) and p not in new_paths]
            sizes[split] = {"num_bytes": nbytes, "num_examples": n, "download_size": download}
        old_card = None
        if "README.md" in existing:
            try:
                card_path = hf_hub_download(repo_id, "README.md", repo_type="dataset",
                                            revision=revision, token=token)
                with open(card_path, encoding="utf-8") as f:
                    old_card = f.read()
            except EntryNotFoundError:
                old_card = None
        # the Parquet bytes of this config: the new shards plus the other splits' shards kept
        kept = re.compile(rf"^{re.escape(data_dir)}/(?!(?:{'|'.join(map(re.escape, sizes))})-)"
                          r"[^/]*\.parquet$")
        download_size = sum(v["download_size"] for v in sizes.values()) + sum(
            size for p, size in existing.items() if kept.match(p))
        card = _merge_card(old_card, config_name, data_dir, sizes, features.to_dict(),
                           download_size, set_default)
        additions.append(CommitOperationAdd("README.md", card.encode()))
        return api.create_commit(
            repo_id, additions + deletions, repo_type="dataset", revision=revision,
            commit_message=commit_message or "Upload dataset", commit_description=commit_description,
            create_pr=create_pr, token=token)


def _parquet_schema(ds: Dataset) -> pa.Schema:
    """The dataset's schema with its features as "huggingface" metadata, as datasets writes."""
    features = ds.features
    meta = {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
    return features.arrow_schema.with_metadata(meta)
