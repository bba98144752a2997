"""SFTTrainer and SFTConfig against trl 1.16 (the oracle) and hand computations of the loss.

trl is the reference for tokenization (input_ids and labels of every dataset format) and for
the logged loss and metrics of training steps on the tiny Llama. On GPT-2, transformers' Trainer
counts a GPT2LMHeadModel's label tokens before the causal shift (it does not know its loss
shifts), so trl divides by a few more tokens than there are; Cove divides by the label tokens,
as the documented formula says, and GPT-2 is checked against the hand computation instead.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cove.datasets import Dataset
from cove.models.auto import AutoModelForCausalLM
from cove.peft import LoraConfig
from cove.tokenizers import AutoTokenizer
from cove.trl import SFTConfig, SFTTrainer
from tests.trl.conftest import MESSAGES, PROMPT_COMPLETION, TEXT

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

CONVERSATIONAL_PC = {"prompt": [m[:-1] for m in MESSAGES], "completion": [m[-1:] for m in MESSAGES]}
DATA = {
    "text": ({"text": TEXT}, {}),
    "messages": ({"messages": MESSAGES}, {}),
    "messages-assistant-only": ({"messages": MESSAGES}, {"assistant_only_loss": True}),
    "prompt-completion": (PROMPT_COMPLETION, {}),
    "prompt-completion-conversational": (CONVERSATIONAL_PC, {}),
    "prompt-completion-full-loss": (PROMPT_COMPLETION, {"completion_only_loss": False}),
}


def config(module, tmp_path, **kwargs):
    values = dict(bf16=False, report_to="none", use_cpu=True, save_strategy="no",
                  per_device_train_batch_size=4, logging_steps=1, max_steps=2,
                  learning_rate=1e-2, seed=7)
    return module.SFTConfig(str(tmp_path / module.__name__), **{**values, **kwargs})


def ours(model, data, tmp_path, **kwargs):
    return SFTTrainer(str(model) if not isinstance(model, torch.nn.Module) else model,
                      args=config(__import__("cove.trl", fromlist=["SFTConfig"]), tmp_path,
                                  **kwargs),
                      train_dataset=Dataset.from_dict(data))


def theirs(model, data, tmp_path, **kwargs):
    return trl.SFTTrainer(str(model), args=config(trl, tmp_path, **kwargs),
                          train_dataset=datasets.Dataset.from_dict(data))


def columns(dataset) -> dict[str, list]:
    rows = dataset.to_dict()
    return {k: rows[k] for k in ("input_ids", "labels", "seq_lengths") if k in rows}


def batch_of(trainer) -> dict[str, torch.Tensor]:
    dataset = trainer.train_dataset.select_columns(
        [c for c in ("input_ids", "labels", "seq_lengths") if c in trainer.train_dataset.column_names])
    return trainer.data_collator([dataset[i] for i in range(len(dataset))])


def hand_loss(model, input_ids, labels, attention_mask=None) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over the labelled tokens (torch, from the full logits) and their
    count."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                          targets.reshape(-1), ignore_index=-100, reduction="sum")
    return nll, int((targets != -100).sum())


# -- tokenization: the prepared dataset is trl's ---------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("name", sorted(DATA))
def test_prepared_dataset_equals_trl(tiny, tmp_path, kind, name):
    data, kwargs = DATA[name]
    a = ours(tiny[kind], data, tmp_path, **kwargs).train_dataset
    b = theirs(tiny[kind], data, tmp_path, **kwargs).train_dataset
    assert columns(a) == columns(b)


@pytest.mark.parametrize("name", ["prompt-completion", "messages-assistant-only",
                                  "prompt-completion-conversational"])
def test_training_steps_equal_trl(tiny, tmp_path, name):
    data, kwargs = DATA[name]
    a, b = ours(tiny["llama"], data, tmp_path, **kwargs), theirs(tiny["llama"], data, tmp_path,
                                                                  **kwargs)
    a.train()
    b.train()
    logs_a = [h for h in a.state.log_history if "loss" in h]
    logs_b = [h for h in b.state.log_history if "loss" in h]
    assert len(logs_a) == len(logs_b) == 2
    for x, y in zip(logs_a, logs_b, strict=True):
        for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), key


def test_packed_training_equals_trl(tiny, tmp_path):
    kwargs = dict(packing=True, max_length=32, per_device_train_batch_size=2)
    a = ours(tiny["llama"], {"text": TEXT * 2}, tmp_path, **kwargs)
    b = theirs(tiny["llama"], {"text": TEXT * 2}, tmp_path, **kwargs)
    assert columns(a.train_dataset) == columns(b.train_dataset)
    a.train()
    b.train()
    for x, y in zip(*[[h["loss"] for h in t.state.log_history if "loss" in h] for t in (a, b)],
                    strict=True):
        assert x == pytest.approx(y, rel=1e-5)


# -- the loss against the formula ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_completion_only_loss_by_hand(tiny, tmp_path, kind):
    trainer = ours(tiny[kind], PROMPT_COMPLETION, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny[kind])
    model = trainer.model
    batch = batch_of(trainer)
    # the completion tokens, found from the tokenizer alone: what follows the prompt's tokens
    labels = torch.full_like(batch["input_ids"], -100)
    for i, (prompt, completion) in enumerate(zip(PROMPT_COMPLETION["prompt"],
                                                 PROMPT_COMPLETION["completion"], strict=True)):
        full = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
        start = len(tokenizer(prompt)["input_ids"])
        assert batch["input_ids"][i, :len(full)].tolist() == full
        assert full[-1] == tokenizer.eos_token_id  # EOS appended, and trained on
        labels[i, start:len(full)] = torch.tensor(full[start:])
    assert torch.equal(batch["labels"], labels)
    nll, count = hand_loss(model, batch["input_ids"], labels, batch["attention_mask"])
    model.eval()
    loss = trainer.compute_loss(model, dict(batch))
    assert loss.item() == pytest.approx((nll / count).item(), rel=1e-5)
    # accumulated: this micro-batch's share of a batch with 100 label tokens
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(100))
    assert loss.item() == pytest.approx((nll / 100).item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_assistant_only_loss_by_hand(tiny, tmp_path, kind):
    trainer = ours(tiny[kind], {"messages": MESSAGES}, tmp_path, assistant_only_loss=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny[kind])
    batch = batch_of(trainer)
    for i, messages in enumerate(MESSAGES):
        trained = batch["labels"][i][batch["labels"][i] != -100].tolist()
        replies = "".join(m["content"] + "<|im_end|>" for m in messages
                          if m["role"] == "assistant")
        assert tokenizer.decode(trained) == replies  # the assistant turns and only them
    model = trainer.model.eval()
    nll, count = hand_loss(model, batch["input_ids"], batch["labels"], batch["attention_mask"])
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(
        (nll / count).item(), rel=1e-5)


def test_dft_loss_by_hand(tiny, tmp_path):
    trainer = ours(tiny["llama"], PROMPT_COMPLETION, tmp_path, loss_type="dft")
    batch = batch_of(trainer)
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logp = logits[:, :-1].log_softmax(-1)[keep].gather(-1, targets[keep][:, None]).squeeze(-1)
    expected = -(logp * logp.exp()).sum() / keep.sum()
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(expected.item(),
                                                                            rel=1e-5)


def test_padding_free_equals_padded(tiny, tmp_path):
    padded = ours(tiny["llama"], {"text": TEXT}, tmp_path)
    flat = ours(tiny["llama"], {"text": TEXT}, tmp_path, padding_free=True, max_length=None)
    a, b = batch_of(padded), batch_of(flat)
    assert b["input_ids"].shape[0] == 1 and "attention_mask" not in b
    lengths = a["attention_mask"].sum(1).tolist()
    assert b["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    model = padded.model.eval()
    assert flat.compute_loss(model, dict(b)).item() == pytest.approx(
        padded.compute_loss(model, dict(a)).item(), rel=1e-5)


# -- data handling ---------------------------------------------------------------------------

def test_eos_appended_and_truncation(tiny, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny["gpt2"])
    rows = ours(tiny["gpt2"], {"text": TEXT}, tmp_path).train_dataset.to_dict()
    for text, ids in zip(TEXT, rows["input_ids"], strict=True):
        assert ids == tokenizer(text + tokenizer.eos_token)["input_ids"]
    short = ours(tiny["gpt2"], {"text": TEXT}, tmp_path, max_length=5).train_dataset.to_dict()
    assert short["input_ids"] == [ids[:5] for ids in rows["input_ids"]]


def test_formatting_func_and_text_field(tiny, tmp_path):
    data = {"question": ["2 + 2?", "the cat?"], "answer": ["4", "sat on the mat"]}

    def fmt(example):
        return f"Q: {example['question']} A: {example['answer']}"

    trainer = SFTTrainer(str(tiny["llama"]), args=config(
        __import__("cove.trl", fromlist=["x"]), tmp_path), train_dataset=Dataset.from_dict(data),
        formatting_func=fmt)
    reference = trl.SFTTrainer(str(tiny["llama"]), args=config(trl, tmp_path),
                               train_dataset=datasets.Dataset.from_dict(data),
                               formatting_func=fmt)
    assert columns(trainer.train_dataset) == columns(reference.train_dataset)
    renamed = ours(tiny["llama"], {"body": TEXT}, tmp_path, dataset_text_field="body")
    plain = ours(tiny["llama"], {"text": TEXT}, tmp_path)
    assert columns(renamed.train_dataset) == columns(plain.train_dataset)


def test_clear_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"SFTTrainer cannot train.*'prompt', 'completion'.*"
                                         r"dataset_text_field"):
        ours(tiny["llama"], {"question": ["a"], "answer": ["b"]}, tmp_path)
    with pytest.raises(ValueError, match="needs a conversational dataset"):
        ours(tiny["llama"], {"text": TEXT}, tmp_path, assistant_only_loss=True)
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match="generation"):
        ours(tiny["llama"], {"messages": MESSAGES}, tmp_path, assistant_only_loss=True,
             chat_template_path=str(template))
    with pytest.raises(ValueError, match="activation offloading"):
        SFTConfig("out", bf16=False, activation_offloading=True)
    with pytest.raises(ValueError, match="trust_remote_code"):
        SFTConfig("out", bf16=False, trust_remote_code=True)
    with pytest.raises(TypeError, match="Cove does not implement it"):
        SFTConfig("out", bf16=False, use_liger_kernel=True)
    with pytest.raises(ValueError, match="loss_type 'sum'"):
        SFTConfig("out", bf16=False, loss_type="sum")
    with pytest.raises(ValueError, match="padding_free=True without packing"):
        ours(tiny["llama"], {"text": TEXT}, tmp_path, padding_free=True)


def test_config_defaults_equal_trl():
    a, b = SFTConfig("out", bf16=False), trl.SFTConfig("out", bf16=False, report_to="none")
    for field in ("learning_rate", "max_length", "dataset_text_field", "packing",
                  "packing_strategy", "padding_free", "pad_to_multiple_of", "completion_only_loss",
                  "assistant_only_loss", "eos_token", "pad_token", "dataset_kwargs",
                  "dataset_num_proc", "eval_packing", "shuffle_dataset", "loss_type",
                  "truncation_mode", "logging_steps", "gradient_checkpointing"):
        assert getattr(a, field) == getattr(b, field), field
    assert SFTConfig("out", bf16=False, dataset_kwargs=json.dumps(
        {"skip_prepare_dataset": True})).dataset_kwargs == {"skip_prepare_dataset": True}


def test_default_args_name(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output folder is made in the working directory
    trainer = SFTTrainer(str(tiny["llama"]), train_dataset=Dataset.from_dict({"text": TEXT}))
    assert trainer.args.output_dir == "llama-SFT"
    assert trainer.args.learning_rate == 2e-5


def test_peft_trains_only_the_adapter(tiny, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny["llama"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SFTTrainer(model, args=config(__import__("cove.trl", fromlist=["x"]), tmp_path),
                         train_dataset=Dataset.from_dict(PROMPT_COMPLETION),
                         peft_config=LoraConfig(r=4, lora_alpha=8,
                                                target_modules=["q_proj", "v_proj"]))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    adapters = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
                if "lora_B" in n}
    trainer.train()
    for name, p in trainer.model.named_parameters():
        if name in adapters:
            assert not torch.equal(p, adapters[name]), name  # lora_B starts at zero and moves
    base = trainer.model.get_base_model()
    for name, value in base.state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(value, before[key]), name


def test_evaluate_equals_trl(tiny, tmp_path):
    kwargs = dict(per_device_eval_batch_size=4)
    a = SFTTrainer(str(tiny["llama"]), args=config(__import__("cove.trl", fromlist=["x"]),
                                                   tmp_path, **kwargs),
                   train_dataset=Dataset.from_dict({"text": TEXT}),
                   eval_dataset=Dataset.from_dict(PROMPT_COMPLETION))
    b = trl.SFTTrainer(str(tiny["llama"]), args=config(trl, tmp_path, **kwargs),
                       train_dataset=datasets.Dataset.from_dict({"text": TEXT}),
                       eval_dataset=datasets.Dataset.from_dict(PROMPT_COMPLETION))
    x, y = a.evaluate(), b.evaluate()
    for key in ("eval_loss", "eval_entropy", "eval_mean_token_accuracy"):
        assert x[key] == pytest.approx(y[key], rel=1e-5), key


def test_accumulated_steps_equal_trl(tiny, tmp_path):
    """Two micro-batches per step: the loss is divided by the label tokens of both."""
    kwargs = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    a = ours(tiny["llama"], PROMPT_COMPLETION, tmp_path, **kwargs)
    b = theirs(tiny["llama"], PROMPT_COMPLETION, tmp_path, **kwargs)
    a.train()
    b.train()
    for x, y in zip(*[[h["loss"] for h in t.state.log_history if "loss" in h] for t in (a, b)],
                    strict=True):
        assert x == pytest.approx(y, rel=1e-5)


def test_bf16_by_default_where_the_machine_has_it(tiny, tmp_path):
    """TRL's bf16 default: on a CPU with use_cpu=True the step runs in bf16 autocast (the
    Accelerator's float32 outputs keep their model-output type); without it, fp32."""
    from cove.trl import DPOConfig, DPOTrainer
    from tests.trl.conftest import PREFERENCE

    common = dict(max_steps=1, per_device_train_batch_size=2, report_to=[], logging_steps=1,
                  disable_tqdm=True)
    assert SFTConfig(str(tmp_path / "fp32")).bf16 is False
    sft = SFTTrainer(model=str(tiny["llama"]), train_dataset=Dataset.from_dict(PROMPT_COMPLETION),
                     args=SFTConfig(str(tmp_path / "sft"), use_cpu=True, **common))
    dpo = DPOTrainer(model=str(tiny["llama"]), train_dataset=Dataset.from_dict(PREFERENCE),
                     args=DPOConfig(str(tmp_path / "dpo"), use_cpu=True, **common))
    for trainer in (sft, dpo):
        assert trainer.args.bf16 and trainer.args.mixed_precision == "bf16"
        trainer.train()
        loss = trainer.state.log_history[0]["loss"]
        assert torch.isfinite(torch.tensor(float(loss)))
