"""KVCache.reorder: beam search reorders the cache's rows every step, in place, over the filled
positions only (beam outputs themselves are checked in test_generate and test_model_parity)."""

from __future__ import annotations

import pytest
import torch

from cove.models.cache import KVCache

ROWS, HEADS, MAX, DIM = 4, 2, 10, 3


def filled_cache(lengths: tuple[int, ...]) -> KVCache:
    """A cache whose layer i holds lengths[i] positions of random values; the slots beyond
    hold their row's number, so that a copy of them between rows shows."""
    cache = KVCache(len(lengths), ROWS, HEADS, DIM, MAX)
    for t in cache.keys + cache.values:
        t.copy_(torch.arange(ROWS, dtype=t.dtype).view(ROWS, 1, 1, 1).expand_as(t))
    for layer, n in enumerate(lengths):
        k = torch.randn(ROWS, HEADS, n, DIM)
        cache.update(layer, k, -k)
    return cache


def test_reorder_moves_only_the_filled_rows_in_place():
    cache = filled_cache((6, 6, 3))
    before_k = [t.clone() for t in cache.keys]
    before_v = [t.clone() for t in cache.values]
    pointers = [t.data_ptr() for t in cache.keys + cache.values]
    index = torch.tensor([2, 0, 0, 1])  # row 0 is read by two rows; row 3 is dropped
    cache.reorder(index)
    assert [t.data_ptr() for t in cache.keys + cache.values] == pointers
    for layer, n in enumerate(cache.lengths):
        for after, before in ((cache.keys[layer], before_k[layer]),
                              (cache.values[layer], before_v[layer])):
            assert torch.equal(after[:, :, :n], before[:, :, :n].index_select(0, index))
            assert torch.equal(after[:, :, n:], before[:, :, n:])  # unfilled: left alone
    assert cache.lengths == [6, 6, 3]


def test_reorder_with_every_row_in_place_changes_nothing():
    cache = filled_cache((5, 5))
    before = [t.clone() for t in cache.keys]
    cache.reorder(torch.arange(ROWS))
    assert all(torch.equal(a[:, :, :5], b[:, :, :5]) for a, b in zip(cache.keys, before,
                                                                        strict=True))


def test_reorder_to_another_row_count_allocates_and_keeps_filling():
    cache = filled_cache((4, 4))
    before = cache.keys[1][:, :, :4].clone()
    cache.reorder(torch.tensor([3, 3, 1, 0, 2, 2]))  # e.g. widening prompts into beams
    assert cache.keys[1].shape == (6, HEADS, MAX, DIM) and cache.lengths == [4, 4]
    assert torch.equal(cache.keys[1][:, :, :4], before[[3, 3, 1, 0, 2, 2]])
    new = torch.ones(6, HEADS, 1, DIM)
    keys, values = cache.update(1, new, new)
    assert keys.shape == (6, HEADS, 5, DIM) and torch.equal(keys[:, :, 4:], new)
    assert torch.equal(values[:, :, :4], -before[[3, 3, 1, 0, 2, 2]])


def test_reorder_rejects_rows_out_of_range():
    cache = filled_cache((2,))
    for index in ([0, 1, 2, 4], [0, -1, 1, 2]):
        with pytest.raises(IndexError, match="row indices"):
            cache.reorder(torch.tensor(index))


def test_reorder_agrees_with_index_select_on_any_index():
    """Chains, shared sources and cycles (rows swapping places), over all layers' block at
    once (layers filled alike) and layer by layer (filled to different lengths)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        rows = 1 + trial % 7
        if trial % 3:
            index = torch.randint(rows, (rows,), generator=g)
        else:
            index = torch.randperm(rows, generator=g)
        cache = KVCache(2, rows, 1, 2, 4)
        lengths = (3, 3) if trial % 2 else (3, 2)
        for layer, n in enumerate(lengths):
            cache.update(layer, torch.randn(rows, 1, n, 2, generator=g),
                         torch.randn(rows, 1, n, 2))
        expected = [t[:, :, :n].index_select(0, index)
                    for t, n in zip(cache.keys + cache.values, lengths * 2, strict=True)]
        cache.reorder(index)
        assert all(torch.equal(t[:, :, :n], e) for t, n, e in zip(
            cache.keys + cache.values, lengths * 2, expected, strict=True)), index
