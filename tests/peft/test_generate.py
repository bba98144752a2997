"""Adapted models generate as peft + transformers do (greedy), run in pipelines, and load
through the Auto classes from an adapter folder (its base found in adapter_config.json)."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

import cove
import cove.peft
import peft
from cove.models import AutoModelForCausalLM, AutoModelForSequenceClassification
from tests.peft.conftest import assert_close, load, logits, randomize_adapter

PROMPTS = ["the quick brown", "once upon a time there was", "hello"]
METHODS = {
    "lora": ("LoraConfig", dict(task_type="CAUSAL_LM", target_modules="all-linear", r=4)),
    "prompt-tuning": ("PromptTuningConfig", dict(task_type="CAUSAL_LM", num_virtual_tokens=3)),
    "prefix": ("PrefixTuningConfig", dict(task_type="CAUSAL_LM", num_virtual_tokens=3)),
}


def saved_reference(folders, kind: str, method: str, path) -> peft.PeftModel:
    name, options = METHODS[method]
    model = peft.get_peft_model(load(folders, kind, "ref"), getattr(peft, name)(**options))
    randomize_adapter(model, seed=11)
    model.save_pretrained(path)
    return model.eval()


def greedy(model, input_ids, attention_mask, steps: int) -> torch.Tensor:
    """Greedy decoding by full forward passes (no cache): the oracle for generate."""
    for _ in range(steps):
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's "position ids are ignored" (prompt tuning)
            out = model(input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=positions)
        input_ids = torch.cat([input_ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], 1)
    return input_ids


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generate_equals_peft(kind, method, folders, tmp_path):
    """LoRA: as peft + transformers' generate. Prompt and prefix tuning: as greedy decoding
    with peft's forward (peft 0.21's own generate with transformers 5 drifts from its forward
    after a few tokens for those methods)."""
    reference = saved_reference(folders, kind, method, tmp_path)
    ours = cove.peft.PeftModel.from_pretrained(load(folders, kind, "cove"), tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folders[kind]))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    steps = 6
    # eos never stops a row here: the oracle's rows all run the full length too
    options = dict(max_new_tokens=steps, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=None)
    for inputs in (dict(input_ids=enc["input_ids"][1:2], attention_mask=enc["attention_mask"][1:2]),
                   dict(enc)):
        if method == "lora":
            with torch.no_grad():
                expected = reference.generate(**inputs, **options)
        else:
            expected = greedy(reference, inputs["input_ids"], inputs["attention_mask"], steps)
        assert torch.equal(ours.generate(**inputs, **options), expected)
    with ours.disable_adapter():
        plain = load(folders, kind, "cove").generate(**enc, **options)
        assert torch.equal(ours.generate(**enc, **options), plain)


def test_pipelines_take_an_adapted_model(folders, tmp_path):
    saved_reference(folders, "llama", "lora", tmp_path)
    adapted = cove.peft.PeftModel.from_pretrained(load(folders, "llama", "cove"), tmp_path)
    generator = cove.pipeline("text-generation", model=adapted)  # tokenizer: the base's
    merged = cove.pipeline("text-generation", tokenizer=str(folders["llama"]),
                           model=cove.peft.PeftModel.from_pretrained(
                               load(folders, "llama", "cove"), tmp_path).merge_and_unload())
    options = dict(max_new_tokens=5, do_sample=False)
    assert generator(PROMPTS, **options) == merged(PROMPTS, **options)
    plain = cove.pipeline("text-generation", model=str(folders["llama"]))
    assert generator(PROMPTS, **options) != plain(PROMPTS, **options)

    classifier = cove.peft.get_peft_model(load(folders, "bert", "cove"), cove.peft.LoraConfig(
        task_type="SEQ_CLS", target_modules=["query", "value"]))
    randomize_adapter(classifier, seed=5).eval()
    texts = ["i love this movie", "the cat sat on the mat"]
    scores = cove.pipeline("text-classification", model=classifier, top_k=None)(texts)
    with torch.no_grad():
        from cove.tokenizers import AutoTokenizer

        enc = AutoTokenizer.from_pretrained(str(folders["bert"]))(texts, return_tensors="pt",
                                                                  padding=True)
        probs = classifier(**enc).logits.softmax(-1)
    for row, p in zip(scores, probs, strict=True):
        best = max(row, key=lambda r: r["score"])
        assert abs(best["score"] - p.max().item()) < 1e-5


def test_auto_classes_load_an_adapter_folder(folders, tmp_path):
    reference = saved_reference(folders, "llama", "lora", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(model, cove.peft.PeftModelForCausalLM)
    assert model.peft_config["default"].base_model_name_or_path == str(folders["llama"])
    assert_close(logits(model, "llama"), logits(reference, "llama"))
    # transformers does the same with the same folder
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert_close(logits(model, "llama"), logits(theirs, "llama"))

    classifier = cove.peft.get_peft_model(load(folders, "bert", "cove"), cove.peft.IA3Config(
        task_type="SEQ_CLS"))
    randomize_adapter(classifier, seed=6).save_pretrained(tmp_path / "bert")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert")
    assert isinstance(loaded, cove.peft.PeftModelForSequenceClassification)
    assert_close(logits(loaded, "bert"), logits(classifier.eval(), "bert"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="config.json not found"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "empty")
