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


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_packed_batch_loss_is_token_weighted_mean_of_examples(tiny, tmp_path, kind):
    import torch
    import torch.nn.functional as F

    from cove.trl import SFTConfig, SFTTrainer
    from tests.trl.conftest import PROMPT_COMPLETION

    args = dict(bf16=False, report_to="none", use_cpu=True, save_strategy="no")
    plain = SFTTrainer(str(tiny[kind]), args=SFTConfig(str(tmp_path / "a"), **args),
                       train_dataset=Dataset.from_dict(PROMPT_COMPLETION))
    packed = SFTTrainer(plain.model, processing_class=plain.processing_class,
                        args=SFTConfig(str(tmp_path / "b"), packing=True, max_length=48, **args),
                        train_dataset=Dataset.from_dict(PROMPT_COMPLETION))
    rows = packed.train_dataset.select_columns(["input_ids", "labels", "seq_lengths"])
    assert max(len(r) for r in rows["seq_lengths"]) > 1  # some row holds several examples
    batch = packed.data_collator([rows[i] for i in range(len(rows))])
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch

    model = plain.model.eval()
    total, count = 0.0, 0
    for example in plain.train_dataset:  # each example alone, no packing
        ids, labels = torch.tensor([example["input_ids"]]), torch.tensor([example["labels"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        total += F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                                 reduction="sum").item()
        count += int((labels[0, 1:] != -100).sum())
    loss = packed.compute_loss(model, dict(batch))
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
