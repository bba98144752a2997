"""Splitting a dataset between the nodes (ranks) of a distributed training run."""

from __future__ import annotations

from typing import Any

from cove.datasets.iterable_dataset import IterableDataset


def split_dataset_by_node(dataset: Any, rank: int, world_size: int) -> Any:
    """The part of `dataset` that node `rank` of `world_size` reads.

    A map-style Dataset gets a contiguous shard of rows. An IterableDataset whose shards divide
    evenly gets `n_shards // world_size` whole shards; otherwise every node reads all shards and
    keeps one example in `world_size` (the examples at `rank`, `rank + world_size`, ...).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, "
                         f"world_size={world_size}.")
    if isinstance(dataset, IterableDataset):
        if dataset._distributed is not None:  # split again: a node of a node
            inner_rank, inner_world = dataset._distributed
            rank, world_size = inner_rank + inner_world * rank, inner_world * world_size
        return dataset._with(distributed=(rank, world_size))
    if hasattr(dataset, "shard") and hasattr(dataset, "__getitem__"):
        return dataset.shard(num_shards=world_size, index=rank, contiguous=True)
    raise TypeError("split_dataset_by_node expects a Dataset or an IterableDataset, got "
                    f"{type(dataset).__name__}.")
