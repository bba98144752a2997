"""The real SmolLM2-135M-Instruct, imported from its GGUF by Cove, chatting.

Cove's AutoModelForCausalLM and AutoTokenizer load it with `gguf_file=` (converted once into
a private cache), as transformers does: the greedy chat answer to the France question names
Paris, its tokens are exactly transformers' on the same GGUF and the same input ids, and the
streamed text adds up to the decoded answer. Each model is loaded once for the module.
"""

from __future__ import annotations

import threading

import pytest
import torch

from cove.generation import TextIteratorStreamer, TextStreamer
from tests.models.test_gguf import SMOLLM2, SMOLLM2_NAME, need_data

QUESTION = "What is the capital of France?"
POEM = "Write a short poem about the sea."  # a long answer: all 32 tokens are compared
NEW = 32


@pytest.fixture(scope="module")
def cove_smollm2():
    from cove.models import AutoModelForCausalLM
    from cove.tokenizers import AutoTokenizer

    need_data()
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME,
                                                 dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def hf_smollm2():
    transformers = pytest.importorskip("transformers")
    need_data()
    model = transformers.AutoModelForCausalLM.from_pretrained(SMOLLM2.parent,
                                                              gguf_file=SMOLLM2_NAME)
    return model.eval()


def chat_ids(tokenizer, question: str) -> torch.Tensor:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


class Collect(TextStreamer):
    """A TextStreamer that keeps the pieces it would print."""

    def __init__(self, tokenizer, **kwargs) -> None:
        super().__init__(tokenizer, **kwargs)
        self.pieces: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.pieces.append(text)


@pytest.fixture(scope="module")
def answers(cove_smollm2) -> dict:
    """Cove's greedy answers (prompt included), computed once, each with a streamer attached:
    the poem through a TextStreamer, the France answer through a TextIteratorStreamer read
    while generate runs in another thread (special tokens kept)."""
    model, tokenizer = cove_smollm2
    printed = Collect(tokenizer, skip_prompt=True, skip_special_tokens=True)
    poem = model.generate(chat_ids(tokenizer, POEM), max_new_tokens=NEW, do_sample=False,
                          streamer=printed)
    iterator = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=120)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=model.generate(
        chat_ids(tokenizer, QUESTION), max_new_tokens=NEW, do_sample=False, streamer=iterator)))
    thread.start()
    iterated = list(iterator)
    thread.join()
    return {POEM: poem, QUESTION: result["out"], "printed": printed.pieces,
            "iterated": iterated}


def test_chat_answer_names_paris(cove_smollm2, answers):
    model, tokenizer = cove_smollm2
    prompt = chat_ids(tokenizer, QUESTION)
    assert tokenizer.decode(prompt[0]).endswith("<|im_start|>assistant\n")
    answer = tokenizer.decode(answers[QUESTION][0, prompt.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    assert answers[QUESTION][0, -1].item() == model.generation_config.eos_token_id


@pytest.mark.parametrize("question", [QUESTION, POEM], ids=["france", "poem"])
def test_greedy_tokens_match_transformers(cove_smollm2, hf_smollm2, answers, question):
    _, tokenizer = cove_smollm2
    ids = chat_ids(tokenizer, question)
    with torch.no_grad():
        expected = hf_smollm2.generate(ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=NEW, do_sample=False)
    assert answers[question].tolist() == expected.tolist()
    if question == POEM:
        assert expected.shape[1] == ids.shape[1] + NEW  # no early end: every token compared


def test_streamers_add_up_to_the_answer(cove_smollm2, answers):
    _, tokenizer = cove_smollm2
    prompt_len = chat_ids(tokenizer, POEM).shape[1]
    decoded = tokenizer.decode(answers[POEM][0, prompt_len:], skip_special_tokens=True)
    assert "".join(answers["printed"]) == decoded
    assert len([p for p in answers["printed"] if p]) > 5  # streamed, not printed once at the end
    prompt_len = chat_ids(tokenizer, QUESTION).shape[1]
    text = "".join(answers["iterated"])
    assert text == tokenizer.decode(answers[QUESTION][0, prompt_len:])
    assert "Paris" in text and text.endswith("<|im_end|>")
