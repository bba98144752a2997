"""Dataloaders sharded between processes, as accelerate shards them, and resumable mid-epoch.

Each process takes whole batches in turn (process i gets batches i, i+n, ...) or, with
`split_batches`, a slice of every batch. With `even_batches` every process gets as many
batches: the last round is completed with samples from the start of the epoch (so an eval set
gains a few duplicates, which `Accelerator.gather_for_metrics` drops again). Shuffling is the
same on every process: the sampler's generator is process 0's at the start of each epoch.

A prepared dataloader knows how many batches of which epoch it has given, and the random
state the epoch started from, so a checkpoint resumes at the very next batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, IterableDataset

from cove.accelerate.operations import send_to_device

# DataLoader arguments carried over to the prepared one, with their defaults
_LOADER_KWARGS = {"num_workers": 0, "collate_fn": None, "pin_memory": False, "timeout": 0,
                  "worker_init_fn": None, "multiprocessing_context": None, "generator": None,
                  "prefetch_factor": None, "persistent_workers": False, "pin_memory_device": "",
                  "in_order": True}


class BatchSamplerShard(BatchSampler):
    """The batches of `batch_sampler` that process `process_index` of `num_processes` gets."""

    def __init__(self, batch_sampler: Any, num_processes: int = 1, process_index: int = 0,
                 split_batches: bool = False, even_batches: bool = True) -> None:
        # (BatchSampler.__init__ is not called: this wraps a batch sampler, not a sampler)
        self.batch_sampler = batch_sampler
        self.num_processes = num_processes
        self.process_index = process_index
        self.split_batches = split_batches
        self.even_batches = even_batches
        self.batch_size = getattr(batch_sampler, "batch_size", None)
        self.drop_last = getattr(batch_sampler, "drop_last", False)
        if split_batches and (self.batch_size is None or self.batch_size % num_processes):
            raise ValueError(f"split_batches needs a batch size that is a multiple of the number "
                             f"of processes ({num_processes}), got {self.batch_size}")

    @property
    def sampler(self) -> Any:
        return getattr(self.batch_sampler, "sampler", None)

    def __len__(self) -> int:
        total = len(self.batch_sampler)
        if self.split_batches:
            return total
        rounds, left = divmod(total, self.num_processes)
        if left == 0 or self.drop_last:
            return rounds
        if self.even_batches:
            return rounds + 1
        return rounds + (1 if self.process_index < left else 0)

    def __iter__(self) -> Iterator[list]:
        return self._split() if self.split_batches else self._whole()

    def _full(self, batch: list) -> bool:
        return self.batch_size is None or len(batch) == self.batch_size

    def _whole(self) -> Iterator[list]:
        n, me = self.num_processes, self.process_index
        first: list = []  # the first n batches: the samples a short last round is completed from
        round_: list = []
        for batch in self.batch_sampler:
            if len(first) < n:
                first.append(batch)
            round_.append(batch)
            if len(round_) == n and self._full(batch):
                yield round_[me]
                round_ = []
        if self.drop_last or not round_:
            return
        if not self.even_batches:
            if me < len(round_):
                yield round_[me]
            return
        if self.batch_size is None:  # batches of any size: whole batches from the start
            pool = list(first)
            while len(pool) < n:
                pool += pool
            round_ += pool[: n - len(round_)]
            yield round_[me]
            return
        pool = [index for batch in first for index in batch]
        while len(pool) < n * self.batch_size:
            pool += pool
        cursor = self.batch_size - len(round_[-1])
        round_[-1] = list(round_[-1]) + pool[:cursor]
        while len(round_) < n:
            round_.append(pool[cursor: cursor + self.batch_size])
            cursor += self.batch_size
        yield round_[me]

    def _split(self) -> Iterator[list]:
        size = self.batch_size // self.num_processes
        mine = slice(size * self.process_index, size * (self.process_index + 1))
        first: list = []
        last: list = []
        for batch in self.batch_sampler:
            if not first:
                first = list(batch)
            last = batch
            if len(batch) == self.batch_size:
                yield batch[mine]
        if self.drop_last or not first or len(last) == self.batch_size:
            return
        if not self.even_batches:
            if len(last) > mine.start:
                yield last[mine]
            return
        while len(first) < self.batch_size:
            first += first
        yield (list(last) + first)[mine]


class IterableDatasetShard(IterableDataset):
    """This process's samples of an iterable dataset: every process reads the stream, keeps its
    part of each global batch, and completes the last one from the first (unless `drop_last`)."""

    def __init__(self, dataset: Any, batch_size: int = 1, drop_last: bool = False,
                 num_processes: int = 1, process_index: int = 0,
                 split_batches: bool = False) -> None:
        if split_batches and batch_size > 1 and batch_size % num_processes:
            raise ValueError(f"split_batches needs a batch size that is a multiple of the number "
                             f"of processes ({num_processes}), got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_processes = num_processes
        self.process_index = process_index
        self.split_batches = split_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        whole = self.batch_size * self.num_processes
        count = len(self.dataset) // whole if self.drop_last else -(-len(self.dataset) // whole)
        return count * self.batch_size

    def __iter__(self) -> Iterator[Any]:
        real = self.batch_size if self.split_batches else self.batch_size * self.num_processes
        per = self.batch_size // self.num_processes if self.split_batches else self.batch_size
        mine = slice(per * self.process_index, per * (self.process_index + 1))
        first: list = []
        current: list = []
        for element in self.dataset:
            current.append(element)
            if len(current) == real:
                yield from current[mine]
                first = first or current
                current = []
        if current and not self.drop_last:
            first = first or list(current)
            while len(current) < real:
                current += first
            yield from current[:real][mine]


class _ResumableBatchSampler(BatchSampler):
    """A batch sampler that can start its next pass after the first `skip` batches, without
    loading them (how a dataloader resumes mid-epoch)."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.skip = 0
        self.batch_size = getattr(batch_sampler, "batch_size", None)
        self.drop_last = getattr(batch_sampler, "drop_last", False)

    @property
    def sampler(self) -> Any:
        return getattr(self.batch_sampler, "sampler", None)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list]:
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(self.batch_sampler):
            if i >= skip:
                yield batch


def _innermost_sampler(batch_sampler: Any) -> Any:
    """The index sampler under any batch-sampler wrappers (None if there is none)."""
    while batch_sampler is not None:
        sampler = getattr(batch_sampler, "sampler", None)
        if sampler is not None and not isinstance(sampler, BatchSampler):
            return sampler
        batch_sampler = sampler if sampler is not None else getattr(batch_sampler,
                                                                    "batch_sampler", None)
    return None


class DataLoaderShard(DataLoader):
    """A `DataLoader` for one process: its shard of the batches, on its device, resumable.

    Made by `Accelerator.prepare` (or `prepare_data_loader`); iterate it as the original.
    `total_batch_size` is the batch size over all processes; `set_epoch` passes the epoch to
    the sampler (and dataset) before each pass, as accelerate does.
    """

    def __init__(self, dataset: Any, device: torch.device | None = None,
                 gradient_state: Any = None, synchronized_generator: torch.Generator | None = None,
                 total_batch_size: int | None = None, non_blocking: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.device = device
        self.gradient_state = gradient_state
        self.synchronized_generator = synchronized_generator
        self.total_batch_size = total_batch_size
        self._non_blocking = non_blocking
        self.iteration = 0  # the epoch, as passed to set_epoch
        self.end_of_dataloader = False
        self.remainder = -1
        self._position = 0  # batches given in the current epoch (skipped ones included)
        self._epoch_rng: dict | None = None  # random state the current epoch started from
        self._resume: dict | None = None  # from load_state: where the next pass starts

    def set_epoch(self, epoch: int) -> None:
        """The epoch number the sampler (or dataset) is told before the next pass."""
        self.iteration = epoch
        samplers = [self.batch_sampler, getattr(self.batch_sampler, "batch_sampler", None),
                    _innermost_sampler(self.batch_sampler), self.sampler]
        seen: set[int] = set()
        for sampler in samplers:
            if sampler is not None and id(sampler) not in seen and hasattr(sampler, "set_epoch"):
                seen.add(id(sampler))
                sampler.set_epoch(epoch)
        if not seen and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _generators(self) -> list[torch.Generator]:
        found = [getattr(_innermost_sampler(self.batch_sampler), "generator", None),
                 self.generator]
        unique: list[torch.Generator] = []
        for g in found:
            if isinstance(g, torch.Generator) and all(g is not u for u in unique):
                unique.append(g)
        return unique

    def _rng_state(self) -> dict:
        return {"torch": torch.get_rng_state(),
                "generators": [g.get_state() for g in self._generators()]}

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        for g, s in zip(self._generators(), state["generators"], strict=True):
            g.set_state(s)

    def state_dict(self) -> dict:
        """Where this dataloader is: the epoch, the batches given in it, its starting RNG."""
        finished = self._position > 0 and self.end_of_dataloader
        if finished or self._position == 0:
            return {"iteration": self.iteration + (1 if finished else 0), "position": 0}
        return {"iteration": self.iteration, "position": self._position, "rng": self._epoch_rng}

    def load_state_dict(self, state: dict) -> None:
        """The next pass resumes where `state` was taken (see `state_dict`)."""
        self.iteration = state["iteration"]
        self._resume = state if state.get("position") else None

    def __iter__(self) -> Iterator[Any]:
        return self._iterate(None)

    def _iterate(self, start: int | None) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        if start is None:
            start = resume["position"] if resume else 0
        if resume is None and self.synchronized_generator is not None and dist.is_initialized():
            # shuffle alike everywhere: process 0's generator state, each epoch
            state = self.synchronized_generator.get_state()
            if dist.get_backend() == "nccl":  # NCCL moves GPU tensors only
                state = state.cuda()
            dist.broadcast(state, src=0)
            self.synchronized_generator.set_state(state.cpu())
        self.set_epoch(self.iteration)
        epoch_rng = self._rng_state()
        now = None
        if resume is not None:  # replay the epoch's shuffle from its starting state
            now, epoch_rng = epoch_rng, resume["rng"]
            self._set_rng_state(epoch_rng)
        reading_skip = 0
        if isinstance(self.batch_sampler, _ResumableBatchSampler):
            self.batch_sampler.skip = start
        else:  # an iterable dataset: the skipped batches must be read
            reading_skip = start
        self.end_of_dataloader = False
        self.remainder = -1
        if self.total_batch_size and not getattr(self.batch_sampler, "drop_last", self.drop_last):
            source = (self.dataset.dataset if isinstance(self.dataset, IterableDatasetShard)
                      else self.dataset)
            try:
                self.remainder = len(source) % self.total_batch_size
            except TypeError:  # no length: gather_for_metrics keeps everything
                pass
        if self.gradient_state is not None:
            self.gradient_state._add_dataloader(self)
        try:
            iterator = super().__iter__()
            try:
                for _ in range(reading_skip):
                    next(iterator)
                current = next(iterator)  # one batch ahead: to know which one is the last
            except StopIteration:
                self.end_of_dataloader = True
                return
            finally:
                if now is not None:  # the shuffle is drawn: back to the checkpoint's state
                    torch.set_rng_state(now["torch"])
            self._epoch_rng = epoch_rng
            self._position = start
            while True:
                if self.device is not None:
                    current = send_to_device(current, self.device, self._non_blocking)
                try:
                    following = next(iterator)
                except StopIteration:
                    self.end_of_dataloader = True
                    self._position += 1
                    yield current
                    break
                self._position += 1
                yield current
                current = following
            self.iteration += 1
            self._position = 0
            self._epoch_rng = None
        finally:
            if self.gradient_state is not None:
                self.gradient_state._remove_dataloader(self)


class SkipDataLoader:
    """A view of a dataloader whose next passes start after its first `skip_batches` batches
    (see `skip_first_batches`); everything else is the dataloader's."""

    def __init__(self, dataloader: Any, skip_batches: int) -> None:
        self.dataloader = dataloader
        self.skip_batches = skip_batches

    def __getattr__(self, name: str) -> Any:
        if name in ("dataloader", "skip_batches"):
            raise AttributeError(name)
        return getattr(self.dataloader, name)

    def __len__(self) -> int:
        return max(len(self.dataloader) - self.skip_batches, 0)

    def __iter__(self) -> Iterator[Any]:
        if isinstance(self.dataloader, DataLoaderShard):
            return self.dataloader._iterate(self.skip_batches)
        return self._read_past()

    def _read_past(self) -> Iterator[Any]:
        for i, batch in enumerate(self.dataloader):
            if i >= self.skip_batches:
                yield batch


def skip_first_batches(dataloader: Any, num_batches: int = 0) -> Any:
    """`dataloader` starting its next pass at batch `num_batches` of the epoch (to resume).

    The count is from the start of the epoch, as in accelerate: after `load_state`, skipping
    the batches already trained on lands on the same batch as the restored dataloader does
    by itself. A plain map-style `DataLoader` gets a new one whose sampler skips the indices
    (nothing is loaded for them); other dataloaders read past the skipped batches.
    """
    if not isinstance(num_batches, int) or isinstance(num_batches, bool) or num_batches < 0:
        raise ValueError(f"num_batches must be an int >= 0, got {num_batches!r}")
    if isinstance(dataloader, SkipDataLoader):
        return SkipDataLoader(dataloader.dataloader, num_batches)
    if (type(dataloader) is DataLoader and dataloader.batch_sampler is not None
            and not isinstance(dataloader.dataset, IterableDataset)):
        kwargs = {k: getattr(dataloader, k, v) for k, v in _LOADER_KWARGS.items()}
        if not kwargs["num_workers"]:
            kwargs["prefetch_factor"] = None
        skipping = _SkipOnEveryPass(dataloader.batch_sampler, num_batches)
        return DataLoader(dataloader.dataset, batch_sampler=skipping, **kwargs)
    return SkipDataLoader(dataloader, num_batches)


class _SkipOnEveryPass(_ResumableBatchSampler):
    """The batches of `batch_sampler` after its first `skip` (on every pass)."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        super().__init__(batch_sampler)
        self.skip = skip

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)

    def __iter__(self) -> Iterator[list]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield batch


def prepare_data_loader(dataloader: DataLoader, device: torch.device | None = None,
                        num_processes: int = 1, process_index: int = 0,
                        split_batches: bool = False, put_on_device: bool = False,
                        even_batches: bool = True, non_blocking: bool = False,
                        gradient_state: Any = None) -> DataLoaderShard:
    """`dataloader` as a `DataLoaderShard` for process `process_index` of `num_processes`."""
    if not isinstance(dataloader, DataLoader):
        raise TypeError(f"prepare_data_loader takes a torch DataLoader, got "
                        f"{type(dataloader).__name__}")
    kwargs = {k: getattr(dataloader, k, v) for k, v in _LOADER_KWARGS.items()}
    if not kwargs["num_workers"]:
        kwargs["prefetch_factor"] = None  # DataLoader refuses it without workers
    dataset = dataloader.dataset
    batch_size = dataloader.batch_size
    synchronized = None
    if isinstance(dataset, IterableDataset):
        total = None
        if batch_size is not None:
            total = batch_size if split_batches else batch_size * num_processes
        if num_processes > 1:
            if batch_size is None:
                raise ValueError("an iterable dataset's DataLoader needs a batch_size to be "
                                 "sharded between processes")
            dataset = IterableDatasetShard(dataset, batch_size=batch_size,
                                           drop_last=dataloader.drop_last,
                                           num_processes=num_processes,
                                           process_index=process_index,
                                           split_batches=split_batches)
            if split_batches:
                batch_size //= num_processes
        return DataLoaderShard(dataset, device=device if put_on_device else None,
                               gradient_state=gradient_state, total_batch_size=total,
                               non_blocking=non_blocking, batch_size=batch_size,
                               drop_last=dataloader.drop_last, **kwargs)
    sampler_is_batch_sampler = dataloader.batch_sampler is None
    batch_sampler = dataloader.sampler if sampler_is_batch_sampler else dataloader.batch_sampler
    if num_processes > 1:
        if sampler_is_batch_sampler and not isinstance(batch_sampler, BatchSampler):
            raise ValueError("a DataLoader with batch_size=None and no batch sampler gives single "
                             "samples: give it a batch_size (or a BatchSampler) to shard it")
        sampler = _innermost_sampler(batch_sampler)
        if hasattr(sampler, "generator"):
            if sampler.generator is None:  # drawn from the global RNG, as accelerate does
                sampler.generator = torch.Generator()
                sampler.generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_()))
            synchronized = sampler.generator
        batch_sampler = BatchSamplerShard(batch_sampler, num_processes=num_processes,
                                          process_index=process_index,
                                          split_batches=split_batches, even_batches=even_batches)
    per_batch = getattr(batch_sampler, "batch_size", None)
    total = None
    if per_batch is not None:
        total = per_batch if split_batches and num_processes > 1 else per_batch * num_processes
    resumable = _ResumableBatchSampler(batch_sampler)
    if sampler_is_batch_sampler:
        kwargs.update(sampler=resumable, batch_size=None)
    else:
        kwargs.update(batch_sampler=resumable)
    return DataLoaderShard(dataset, device=device if put_on_device else None,
                           gradient_state=gradient_state, synchronized_generator=synchronized,
                           total_batch_size=total, non_blocking=non_blocking, **kwargs)
