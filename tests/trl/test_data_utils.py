"""cove.trl.data_utils against trl.data_utils: the same rows out of the same rows, in every
dataset format, plain and conversational; and the errors that name the columns a trainer needs."""

from __future__ import annotations

import copy

import pytest
import trl.data_utils as ref

import cove.trl.data_utils as ours
from cove.datasets import Dataset
from cove.tokenizers import AutoTokenizer
from tests.trl.conftest import MESSAGES, PREFERENCE, PROMPT_COMPLETION

USER = [{"role": "user", "content": "what color is the sky?"}]
BLUE = [{"role": "assistant", "content": "it is blue."}]
GREEN = [{"role": "assistant", "content": "it is green."}]

ROWS = [
    {"messages": MESSAGES[1]},
    {"prompt": USER},
    {"prompt": [*USER, {"role": "assistant", "content": "it is"}]},  # continued
    {"prompt": USER, "completion": BLUE},
    {"prompt": USER, "chosen": BLUE, "rejected": GREEN},
    {"chosen": USER + BLUE, "rejected": USER + GREEN},
    {"prompt": USER, "completion": BLUE, "label": True},
    {"prompt": USER, "completion": BLUE, "chat_template_kwargs": {"x": 1}},
    {"prompt": "the sky is", "completion": " blue."},
    {"text": "plain text"},
]


@pytest.fixture(scope="module")
def tokenizers(tiny):
    import transformers

    return (AutoTokenizer.from_pretrained(str(tiny["llama"])),
            transformers.AutoTokenizer.from_pretrained(str(tiny["llama"])))


@pytest.mark.parametrize("row", ROWS, ids=lambda r: "+".join(r))
def test_apply_chat_template_equals_trl(row, tokenizers):
    cove_tok, ref_tok = tokenizers
    assert ours.is_conversational(row) == ref.is_conversational(row)
    expected = ref.maybe_apply_chat_template(copy.deepcopy(row), ref_tok)
    assert ours.maybe_apply_chat_template(copy.deepcopy(row), cove_tok) == expected


def test_apply_chat_template_rejects_bad_rows(tokenizers):
    with pytest.raises(KeyError, match="Invalid keys"):
        ours.apply_chat_template({"prompt": USER, "chosen": BLUE}, tokenizers[0])
    with pytest.raises(ValueError, match="last message: system"):
        ours.apply_chat_template({"prompt": [{"role": "system", "content": "x"}]}, tokenizers[0])


@pytest.mark.parametrize("row", [
    {"chosen": "the sky is blue.", "rejected": "the sky is green."},
    {"chosen": "abc", "rejected": "abcd"},
    {"chosen": USER + BLUE, "rejected": USER + GREEN},
    {"prompt": "the sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "what color?", "chosen": USER + BLUE, "rejected": USER + GREEN},
    {"prompt": USER, "completion": BLUE},
], ids=str)
def test_extract_prompt_equals_trl(row):
    assert ours.maybe_extract_prompt(copy.deepcopy(row)) == ref.maybe_extract_prompt(
        copy.deepcopy(row))


def test_unpair_equals_trl():
    import datasets

    data = {**PREFERENCE, "score": [1, 2, 3, 4]}
    got = ours.maybe_unpair_preference_dataset(Dataset.from_dict(data))
    expected = ref.maybe_unpair_preference_dataset(datasets.Dataset.from_dict(data))
    assert got.to_list() == expected.to_list()
    assert ours.maybe_unpair_preference_dataset(Dataset.from_dict(PROMPT_COMPLETION)).to_list() \
        == Dataset.from_dict(PROMPT_COMPLETION).to_list()


def test_chatml_conversion_equals_trl():
    row = {"conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "yo"}]}
    assert ours.is_conversational_from_value(row) and ref.is_conversational_from_value(row)
    assert ours.maybe_convert_to_chatml(copy.deepcopy(row)) == ref.maybe_convert_to_chatml(
        copy.deepcopy(row))


def test_require_format_names_the_columns():
    assert ours.require_format(["prompt", "completion", "id"], "SFTTrainer",
                               ["prompt-completion", "language modeling"]) == "prompt-completion"
    with pytest.raises(ValueError) as e:
        ours.require_format(["question", "answer"], "DPOTrainer",
                            ["preference", "preference (implicit prompt)"])
    message = str(e.value)
    assert "DPOTrainer" in message and "'chosen', 'rejected'" in message
    assert "['answer', 'question']" in message
