"""cove.datasets: Arrow-backed datasets from local files and the Hub, cached and streamable.

    from cove.datasets import load_dataset

    ds = load_dataset("csv", data_files="reviews.csv", split="train")
    ds = ds.map(lambda b: {"n": [len(t) for t in b["text"]]}, batched=True)

Names, arguments and file formats follow Hugging Face `datasets`. Importing this package
imports pyarrow only (never torch): the names below load their module on first use.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports at the end are re-exports)
from __future__ import annotations

from typing import TYPE_CHECKING

from cove._lazy import lazy_exports

# module -> the public names it defines
_EXPORTS = {
    "cove.datasets.features": ("Features", "Value", "ClassLabel", "Sequence", "List", "LargeList",
                               "Array2D"),
    "cove.datasets.info": ("DatasetInfo", "SplitInfo"),
    "cove.datasets.arrow_dataset": ("Dataset",),
    "cove.datasets.dataset_dict": ("DatasetDict",),
    "cove.datasets.combine": ("concatenate_datasets", "interleave_datasets"),
    "cove.datasets.fingerprint": ("disable_caching", "enable_caching", "is_caching_enabled"),
    "cove.datasets.load": ("load_dataset", "load_dataset_builder", "load_from_disk",
                           "get_dataset_split_names", "get_dataset_config_names"),
    "cove.datasets.iterable_dataset": ("IterableDataset", "IterableDatasetDict"),
    "cove.datasets.distributed": ("split_dataset_by_node",),
    "cove.datasets.errors": ("DatasetsError", "DatasetNotFoundError", "DataFilesNotFoundError"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, reference="datasets")

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names resolve lazily
    from cove.datasets.arrow_dataset import (
        Dataset,
    )
    from cove.datasets.combine import (
        concatenate_datasets,
        interleave_datasets,
    )
    from cove.datasets.dataset_dict import (
        DatasetDict,
    )
    from cove.datasets.distributed import (
        split_dataset_by_node,
    )
    from cove.datasets.errors import (
        DataFilesNotFoundError,
        DatasetNotFoundError,
        DatasetsError,
    )
    from cove.datasets.features import (
        Array2D,
        ClassLabel,
        Features,
        LargeList,
        List,
        Sequence,
        Value,
    )
    from cove.datasets.fingerprint import (
        disable_caching,
        enable_caching,
        is_caching_enabled,
    )
    from cove.datasets.info import (
        DatasetInfo,
        SplitInfo,
    )
    from cove.datasets.iterable_dataset import (
        IterableDataset,
        IterableDatasetDict,
    )
    from cove.datasets.load import (
        get_dataset_config_names,
        get_dataset_split_names,
        load_dataset,
        load_dataset_builder,
        load_from_disk,
    )
