"""cove.datasets: Arrow-backed datasets from local files and the Hub, cached and streamable.

    from cove.datasets import load_dataset

    ds = load_dataset("csv", data_files="reviews.csv", split="train")
    ds = ds.map(lambda b: {"n": [len(t) for t in b["text"]]}, batched=True)

Names, arguments and file formats follow Hugging Face `datasets`. Importing this package
imports pyarrow only (never torch): the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    # features.py
    "Features": "features", "Value": "features", "ClassLabel": "features",
    "Sequence": "features", "List": "features", "LargeList": "features",
    "Array2D": "features",
    # info.py
    "DatasetInfo": "info", "SplitInfo": "info",
    # arrow_dataset.py, dataset_dict.py, combine.py
    "Dataset": "arrow_dataset", "DatasetDict": "dataset_dict",
    "concatenate_datasets": "combine", "interleave_datasets": "combine",
    # fingerprint.py (caching switches)
    "disable_caching": "fingerprint", "enable_caching": "fingerprint",
    "is_caching_enabled": "fingerprint",
    # load.py
    "load_dataset": "load", "load_dataset_builder": "load", "load_from_disk": "load",
    "get_dataset_split_names": "load", "get_dataset_config_names": "load",
    # iterable_dataset.py
    "IterableDataset": "iterable_dataset", "IterableDatasetDict": "iterable_dataset",
    "split_dataset_by_node": "distributed",
    # errors.py
    "DatasetsError": "errors", "DatasetNotFoundError": "errors",
    "DataFilesNotFoundError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cove.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cove.datasets.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
