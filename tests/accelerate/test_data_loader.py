"""Dataloader sharding, skipping and resuming, checked against accelerate 1.16's own classes:
which samples each process sees (even batches, wrap-around padding, split batches)."""

import itertools

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler

from cove.accelerate import skip_first_batches
from cove.accelerate.data_loader import BatchSamplerShard, IterableDatasetShard, prepare_data_loader
from cove.accelerate.state import GradientState

hf_data = pytest.importorskip("accelerate.data_loader")


def _shards(cls, batch_sampler, n, **kwargs):
    return [(list(s), len(s)) for s in (cls(batch_sampler, num_processes=n, process_index=i,
                                            **kwargs) for i in range(n))]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("split_batches", [False, True])
def test_batch_sampler_shard_matches_accelerate(n, split_batches):
    cases = 0
    for length, batch_size, drop_last, even in itertools.product(
            [1, 2, 5, 7, 8, 16, 21, 24, 25], [1, 2, 3, 4, 6], [False, True], [True, False]):
        sampler = BatchSampler(SequentialSampler(range(length)), batch_size, drop_last)
        kwargs = {"split_batches": split_batches, "even_batches": even}
        if split_batches and batch_size % n:
            with pytest.raises(ValueError, match="multiple of the number of processes"):
                BatchSamplerShard(sampler, num_processes=n, **kwargs)
            continue
        expected = _shards(hf_data.BatchSamplerShard, sampler, n, **kwargs)
        assert _shards(BatchSamplerShard, sampler, n, **kwargs) == expected, \
            (length, batch_size, drop_last, even)
        cases += 1
    assert cases >= 70


def test_wrap_around_padding_of_the_last_batch():
    # 10 samples, batches of 2 per process on 3 processes: the last round is completed from
    # the first samples, so every process gets 2 batches of 2
    sampler = BatchSampler(SequentialSampler(range(10)), 2, False)
    shards = [list(BatchSamplerShard(sampler, 3, i)) for i in range(3)]
    assert shards == [[[0, 1], [6, 7]], [[2, 3], [8, 9]], [[4, 5], [0, 1]]]


def test_batch_samplers_of_any_size_match_accelerate():
    class Uneven:  # batches of varying sizes, no batch_size
        def __iter__(self):
            start = 0
            for size in [3, 1, 4, 1, 5]:
                yield list(range(start, start + size))
                start += size

        def __len__(self):
            return 5

    for n, even in itertools.product([2, 3, 4], [True, False]):
        kwargs = {"even_batches": even}
        assert (_shards(BatchSamplerShard, Uneven(), n, **kwargs)
                == _shards(hf_data.BatchSamplerShard, Uneven(), n, **kwargs))


class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def test_iterable_dataset_shard_matches_accelerate():
    for length, batch_size, n, drop_last, split in itertools.product(
            [1, 3, 8, 13, 24], [1, 2, 4], [2, 3], [False, True], [False, True]):
        if split and batch_size > 1 and batch_size % n:
            continue
        kwargs = {"batch_size": batch_size, "drop_last": drop_last, "num_processes": n,
                  "split_batches": split}
        mine = [list(IterableDatasetShard(Stream(length), process_index=i, **kwargs))
                for i in range(n)]
        theirs = [list(hf_data.IterableDatasetShard(Stream(length), process_index=i, **kwargs))
                  for i in range(n)]
        assert mine == theirs, (length, batch_size, n, drop_last, split)


def _indices(loader):
    return [batch[0].tolist() for batch in loader]


def _dataset(n=22):
    return torch.utils.data.TensorDataset(torch.arange(n))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("split_batches", [False, True])
def test_prepared_shards_see_what_accelerate_gives_each_process(shuffle, split_batches):
    """prepare_data_loader for each of 2 processes, run here: the same batches as accelerate's
    (with shuffling: its generator is drawn from the global RNG alike), over two epochs."""
    def epochs(prepare, i):
        torch.manual_seed(7)
        loader = prepare(DataLoader(_dataset(), batch_size=4, shuffle=shuffle),
                         num_processes=2, process_index=i, split_batches=split_batches)
        return [_indices(loader) for _ in range(2)], len(loader), loader.total_batch_size

    for i in range(2):
        mine = epochs(prepare_data_loader, i)
        assert mine == epochs(hf_data.prepare_data_loader, i)
        if shuffle:
            assert mine[0][0] != mine[0][1]  # each epoch is shuffled anew


def test_single_process_loader_is_the_original_and_reports_its_end():
    torch.manual_seed(0)
    expected = _indices(DataLoader(_dataset(), batch_size=4, shuffle=True))
    torch.manual_seed(0)
    state = GradientState()
    loader = prepare_data_loader(DataLoader(_dataset(), batch_size=4, shuffle=True),
                                 gradient_state=state)
    seen, ends = [], []
    for (batch,) in loader:
        seen.append(batch.tolist())
        ends.append(state.end_of_dataloader)
        assert state.remainder == 22 % 4
    assert seen == expected
    assert ends == [False] * 5 + [True]
    assert not state.in_dataloader and loader.iteration == 1


def test_skip_first_batches_matches_accelerate(hf_accelerate):
    plain = DataLoader(_dataset(), batch_size=4)
    for n in [0, 2, 6, 9]:
        assert _indices(skip_first_batches(plain, n)) == _indices(
            hf_accelerate.skip_first_batches(plain, n))
        if n <= len(plain):  # (past the end accelerate's length is negative: an error)
            assert len(skip_first_batches(plain, n)) == len(
                hf_accelerate.skip_first_batches(plain, n))
    prepared = prepare_data_loader(DataLoader(_dataset(), batch_size=4))
    theirs = hf_accelerate.Accelerator().prepare(DataLoader(_dataset(), batch_size=4))
    skipped = skip_first_batches(prepared, 2)
    assert _indices(skipped) == _indices(hf_accelerate.skip_first_batches(theirs, 2))
    assert len(skipped) == 4
    assert _indices(prepared) == _indices(theirs)  # the prepared loader itself is untouched
    stream = DataLoader(Stream(10), batch_size=3)
    assert [b.tolist() for b in skip_first_batches(stream, 2)] == [[6, 7, 8], [9]]
    with pytest.raises(ValueError, match="num_batches must be an int >= 0"):
        skip_first_batches(plain, -1)


def test_set_epoch_reaches_the_sampler():
    class EpochSampler(torch.utils.data.Sampler):
        """Shuffles with the epoch as seed, as DistributedSampler does."""

        def __init__(self, n):
            self.n, self.epoch, self.epochs = n, 0, []

        def set_epoch(self, epoch):
            self.epoch = epoch
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(
                self.epoch)).tolist())

        def __len__(self):
            return self.n

    sampler = EpochSampler(12)
    loader = prepare_data_loader(DataLoader(_dataset(12), batch_size=4, sampler=sampler))
    first, second = _indices(loader), _indices(loader)
    assert sampler.epochs == [0, 1] and first != second
    loader.set_epoch(0)
    assert _indices(loader) == first


def test_iterable_datasets_are_sharded_and_padded():
    loaders = [prepare_data_loader(DataLoader(Stream(10), batch_size=2), num_processes=2,
                                   process_index=i) for i in range(2)]
    assert [[b.tolist() for b in d] for d in loaders] == [[[0, 1], [4, 5], [8, 9]],
                                                          [[2, 3], [6, 7], [0, 1]]]
    state = GradientState()
    loader = prepare_data_loader(DataLoader(Stream(9), batch_size=2), num_processes=2,
                                 process_index=1, gradient_state=state)
    remainders = [state.remainder for _ in loader]
    assert remainders == [1, 1, 1]  # 9 samples, 4 a step: 1 real sample in the last step
    with pytest.raises(ValueError, match="needs a batch_size"):
        prepare_data_loader(DataLoader(Stream(10), batch_size=None), num_processes=2)
