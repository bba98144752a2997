"""The Trainer's training samplers: a shuffle fixed by (seed, epoch), and length grouping.

Both draw each epoch's order from a generator seeded with `seed + epoch` and nothing else, so
the order of any epoch can be recomputed: every process of a run shuffles alike, and a resumed
run needs no sampler state beyond the epoch and the batches already taken. The shuffle is
transformers' (accelerate's seedable sampler: `torch.randperm(n)` from `seed + epoch`), so
both libraries feed the same examples in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


class SeededRandomSampler(Sampler[int]):
    """A random order of `range(num_samples)`, drawn from `seed + epoch` (see `set_epoch`)."""

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next pass gives."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.num_samples:
            yield from _permutation(self.num_samples, self.seed + self.epoch).tolist()


class LengthGroupedSampler(SeededRandomSampler):
    """A shuffle that puts examples of similar lengths together, to cut padding.

    The epoch's random order is cut into mega-batches of `mega_batch_mult * batch_size`
    examples (50 batches at most, fewer on a small set); each is sorted longest first, and the
    mega-batch holding the longest example goes first, so a run that runs out of memory does
    so at once. Batches stay random across mega-batches.
    """

    def __init__(self, batch_size: int, lengths: Sequence[int], seed: int,
                 mega_batch_mult: int | None = None) -> None:
        super().__init__(len(lengths), seed)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.lengths = [int(n) for n in lengths]
        if mega_batch_mult is None:
            mega_batch_mult = max(min(len(self.lengths) // (batch_size * 4), 50), 1)
        self.mega_batch_size = mega_batch_mult * batch_size

    def __iter__(self) -> Iterator[int]:
        order = _permutation(self.num_samples, self.seed + self.epoch).tolist()
        size = self.mega_batch_size
        groups = [sorted(order[i:i + size], key=self.lengths.__getitem__, reverse=True)
                  for i in range(0, len(order), size)]
        if groups:
            longest = max(range(len(groups)), key=lambda g: self.lengths[groups[g][0]])
            groups[0], groups[longest] = groups[longest], groups[0]
        for group in groups:
            yield from group


def example_lengths(dataset: object, length_column: str, input_name: str) -> list[int]:
    """Each example's length: the dataset's `length_column` if it has one, else the length of
    each example's `input_name` (reading every example once)."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, list) and length_column in names:
        return [int(n) for n in dataset[length_column]]
    lengths = []
    for i in range(len(dataset)):
        example = dataset[i]
        if not isinstance(example, dict) or input_name not in example:
            raise ValueError(
                f"train_sampling_strategy='group_by_length' needs each example's length: give "
                f"the dataset a {length_column!r} column, or examples with {input_name!r}")
        lengths.append(len(example[input_name]))
    return lengths
