"""Encoder-decoder training: DataCollatorForSeq2Seq against transformers' (the same batches,
decoder inputs shifted from the labels by the model), a LoRA fine-tune of a tiny random T5
through Cove's Seq2SeqTrainer, and predict_with_generate against transformers' Seq2SeqTrainer.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from cove import (
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5ForConditionalGeneration,
)
from cove.peft import LoraConfig, TaskType, get_peft_model
from cove.tokenizers import AutoTokenizer
from tests.pipelines.conftest import TEXTS, VOCAB, write_tokenizer
from tests.train.test_data_collator import assert_same

transformers = pytest.importorskip("transformers")

# T5's pad id is 0, as the tokenizer's [PAD]; its eos is the tokenizer's [SEP] (3)
T5 = dict(vocab_size=len(dict.fromkeys(VOCAB)) + 8, d_model=32, d_kv=8, d_ff=48, num_layers=2,
          num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
          decoder_start_token_id=0, pad_token_id=0, eos_token_id=3, dropout_rate=0.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq2seq-train")
    write_tokenizer(out)
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(transformers.T5Config(**T5)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizers(folder):
    return AutoTokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)


def examples(tokenizer, label_name: str = "labels") -> list[dict]:
    """Each text's ids, with the ids of the next text (a different length) as its labels."""
    inputs = [tokenizer(t)["input_ids"] for t in TEXTS]
    return [{"input_ids": ids, "attention_mask": [1] * len(ids),
             label_name: inputs[(i + 1) % len(inputs)]} for i, ids in enumerate(inputs)]


@pytest.mark.parametrize("kwargs", [
    {}, {"pad_to_multiple_of": 8}, {"padding": "max_length", "max_length": 40},
    {"label_pad_token_id": -1}, {"return_tensors": "np"},
    {"padding": "longest", "pad_to_multiple_of": 5, "return_tensors": "np"},
])
@pytest.mark.parametrize("with_model", [False, True])
def test_collator_matches_transformers(folder, tokenizers, kwargs, with_model):
    cove_tok, tf_tok = tokenizers
    ours_model = T5ForConditionalGeneration.from_pretrained(folder) if with_model else None
    theirs_model = transformers.T5ForConditionalGeneration.from_pretrained(folder) \
        if with_model and kwargs.get("return_tensors") != "np" else None
    if with_model and theirs_model is None:
        # transformers' T5 cannot shift NumPy labels; Cove's collator goes through torch
        ours = DataCollatorForSeq2Seq(cove_tok, model=ours_model, **kwargs)(
            examples(cove_tok))
        expected = ours_model.prepare_decoder_input_ids_from_labels(
            torch.from_numpy(ours["labels"])).numpy()
        assert np.array_equal(ours["decoder_input_ids"], expected)
        return
    for side in ("right", "left"):
        cove_tok.padding_side = tf_tok.padding_side = side
        try:
            for label_name in ("labels", "label"):
                ours = DataCollatorForSeq2Seq(cove_tok, model=ours_model, **kwargs)(
                    examples(cove_tok, label_name))
                theirs = transformers.DataCollatorForSeq2Seq(tf_tok, model=theirs_model,
                                                             **kwargs)(examples(tf_tok,
                                                                                label_name))
                assert_same(ours, theirs)
                assert ("decoder_input_ids" in ours) == with_model
        finally:
            cove_tok.padding_side = tf_tok.padding_side = "right"


def test_collator_shifts_labels_into_decoder_inputs(folder, tokenizers):
    model = T5ForConditionalGeneration.from_pretrained(folder)
    batch = DataCollatorForSeq2Seq(tokenizers[0], model=model)(examples(tokenizers[0])[:2])
    labels, decoder = batch["labels"], batch["decoder_input_ids"]
    assert (labels == -100).any()  # the shorter row's labels are padded with -100
    assert torch.equal(decoder[:, 0], torch.zeros(2, dtype=torch.long))  # the start token
    shifted = labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0)
    assert torch.equal(decoder[:, 1:], shifted)


def test_collator_without_labels_and_bad_input(tokenizers):
    cove_tok, tf_tok = tokenizers
    plain = [{k: v for k, v in e.items() if k != "labels"} for e in examples(cove_tok)]
    ours, theirs = DataCollatorForSeq2Seq(cove_tok)(plain), \
        transformers.DataCollatorForSeq2Seq(tf_tok)(plain)
    assert ours["labels"] is None and theirs["labels"] is None
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    with pytest.raises(ValueError, match="more than max_length=4"):
        DataCollatorForSeq2Seq(cove_tok, padding="max_length", max_length=4)(
            [{"input_ids": [5, 6], "labels": [7, 8, 9, 10, 11]}])
    with pytest.raises(ValueError, match="padding=False"):
        DataCollatorForSeq2Seq(cove_tok, padding=False)(
            [{"input_ids": [5, 6], "labels": [7, 8]}, {"input_ids": [5, 6], "labels": [7]}])
    with pytest.raises(ValueError, match="'labels' and others not"):
        DataCollatorForSeq2Seq(cove_tok)([{"input_ids": [5], "labels": [7]},
                                          {"input_ids": [5], "labels": None}])


def test_lora_fine_tune_of_t5_with_the_seq2seq_trainer(folder, tokenizers, tmp_path):
    model = T5ForConditionalGeneration.from_pretrained(folder)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=8,
                                             lora_alpha=16))
    args = Seq2SeqTrainingArguments(str(tmp_path / "out"), per_device_train_batch_size=4,
                                    max_steps=12, learning_rate=2e-2, logging_steps=1,
                                    save_strategy="no", report_to="none", disable_tqdm=True,
                                    use_cpu=True)
    trainer = Seq2SeqTrainer(model, args, train_dataset=examples(tokenizers[0])[:4],
                             data_collator=DataCollatorForSeq2Seq(tokenizers[0], model=model))
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_predict_with_generate_matches_transformers(folder, tokenizers, tmp_path):
    cove_tok, tf_tok = tokenizers
    # 4 rows a batch, 8 examples: transformers weighs a short last batch as a full one
    common = dict(per_device_eval_batch_size=4, predict_with_generate=True,
                  generation_max_length=9, generation_num_beams=2, report_to="none",
                  use_cpu=True)
    cove_model = T5ForConditionalGeneration.from_pretrained(folder)
    ours = Seq2SeqTrainer(cove_model, Seq2SeqTrainingArguments(str(tmp_path / "a"), **common),
                          data_collator=DataCollatorForSeq2Seq(cove_tok, model=cove_model),
                          processing_class=cove_tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_model = transformers.T5ForConditionalGeneration.from_pretrained(folder)
        theirs = transformers.Seq2SeqTrainer(
            ref_model, transformers.Seq2SeqTrainingArguments(str(tmp_path / "b"), **common),
            data_collator=transformers.DataCollatorForSeq2Seq(tf_tok, model=ref_model),
            processing_class=tf_tok)
        expected = theirs.predict(examples(tf_tok))
        expected_short = theirs.predict(examples(tf_tok), max_new_tokens=3, num_beams=1)
    got = ours.predict(examples(cove_tok))
    assert np.array_equal(got.predictions, expected.predictions)
    assert np.array_equal(got.label_ids, expected.label_ids)
    assert got.metrics["test_loss"] == pytest.approx(expected.metrics["test_loss"], abs=1e-5)
    short = ours.predict(examples(cove_tok), max_new_tokens=3, num_beams=1)
    assert np.array_equal(short.predictions, expected_short.predictions)


def test_generation_config_argument(folder, tmp_path):
    from cove.generation import GenerationConfig

    config = GenerationConfig(max_length=7, num_beams=3, decoder_start_token_id=0)
    config.save_pretrained(tmp_path / "gen")
    for given in (config, str(tmp_path / "gen"), str(tmp_path / "gen" / "generation_config.json")):
        args = Seq2SeqTrainingArguments(str(tmp_path / "out"), generation_config=given,
                                        report_to="none", use_cpu=True)
        assert json.loads(args.to_json_string())["generation_config"]  # serialisable
        model = T5ForConditionalGeneration.from_pretrained(folder)
        Seq2SeqTrainer(model, args)
        assert model.generation_config.num_beams == 3 and model.generation_config is not config
    with pytest.raises(FileNotFoundError):
        Seq2SeqTrainer(T5ForConditionalGeneration.from_pretrained(folder),
                       Seq2SeqTrainingArguments(str(tmp_path / "out"), report_to="none",
                                                generation_config=str(tmp_path / "missing")))
