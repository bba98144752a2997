"""The text-generation pipeline decodes through generate's one-call kernel steps
(cove.models.decoding.FastDecoder) and answers what the module forward answers.

The real SmolLM2-135M-Instruct GGUF, dequantised to float32 and kept quantised (int4 layers,
int8 embedding and tied head): each case runs the pipeline twice, once as it is (counting
FastDecoder.step calls) and once with the model's `fast_decoder` hidden, so generate steps
through the module forward; greedy texts must be equal.
"""

from __future__ import annotations

import pytest

from cove import kernels
from cove.models import decoding
from tests.models.test_gguf import SMOLLM2, SMOLLM2_NAME, need_data

NEW = 12


@pytest.fixture(scope="module", params=["float32", "auto"])
def smollm2(request):
    from cove.models import AutoModelForCausalLM
    from cove.tokenizers import AutoTokenizer

    need_data()
    if kernels.load() is None:
        pytest.skip("cove.kernels are off or not built: generate has no kernel steps")
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME,
                                                 dtype=request.param)
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME)
    return model.eval(), tokenizer


def both_paths(monkeypatch, model, run):
    """(run()'s result and FastDecoder.step calls, run()'s result through the module
    forward)."""
    calls = []
    step = decoding.FastDecoder.step

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return step(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(decoding.FastDecoder, "step", counted)
        fast = run()
    with monkeypatch.context() as m:
        m.setattr(model, "fast_decoder", None)  # generate then keeps the module forward
        module = run()
    return fast, calls, module


def test_prompt(smollm2, monkeypatch):
    from cove import pipeline

    model, tokenizer = smollm2
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    fast, calls, module = both_paths(monkeypatch, model, lambda: pipe(
        "The capital of France is", max_new_tokens=NEW, do_sample=False))
    assert calls and set(calls) == {1}
    assert fast == module
    assert "Paris" in fast[0]["generated_text"]


def test_chat(smollm2, monkeypatch):
    from cove import pipeline

    model, tokenizer = smollm2
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    fast, calls, module = both_paths(monkeypatch, model, lambda: pipe(
        chat, max_new_tokens=NEW, do_sample=False))
    assert len(calls) >= 4 and set(calls) == {1}
    assert fast == module
    assert "Paris" in fast[0]["generated_text"][-1]["content"]


def test_batch_left_padded(smollm2, monkeypatch):
    """Prompts of different lengths generated together: one kernel step per token for all
    rows, left padding honoured."""
    from cove import pipeline

    model, tokenizer = smollm2
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    prompts = ["The capital of France is", "Once upon a time, in a small village by the sea,",
               "1, 2, 3,"]
    fast, calls, module = both_paths(monkeypatch, model, lambda: pipe(
        prompts, batch_size=3, max_new_tokens=NEW, do_sample=False))
    assert calls and set(calls) == {3}
    assert fast == module
