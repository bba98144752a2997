"""BART against transformers: tiny random checkpoints saved by each library and loaded by the
other; logits, loss, greedy and beam outputs, the classification and QA heads."""

import pytest
import torch
import transformers

from cove.models import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BartForConditionalGeneration,
)
from tests.models.seq2seq import compare_forward, compare_gradients

SMALL = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
             decoder_ffn_dim=37, max_position_embeddings=64, dropout=0.0)
IDS = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 11, 2, 1]])
MASK = (IDS != 1).long()
LABELS = torch.tensor([[5, 6, 7, 2], [9, 2, -100, -100]])
GENERATE = [dict(max_new_tokens=10),
            dict(max_new_tokens=10, num_beams=3, length_penalty=0.6),
            dict(max_new_tokens=10, num_beams=3, no_repeat_ngram_size=2, min_length=5,
                 num_return_sequences=2),
            dict(max_length=8, num_beams=2, forced_bos_token_id=0, early_stopping=True)]


@pytest.fixture(scope="module", params=[False, True])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bart")
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(
        transformers.BartConfig(**SMALL, scale_embedding=request.param))
    with torch.no_grad():
        model.final_logits_bias.normal_()
    model.save_pretrained(folder)
    return folder


def _hf(folder):
    return transformers.BartForConditionalGeneration.from_pretrained(folder).eval()


def test_transformers_checkpoint_loads_in_cove(checkpoint):
    hf, cove = _hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    assert type(cove) is BartForConditionalGeneration
    assert cove.lm_head.weight is cove.model.shared.weight
    compare_forward(hf, cove, IDS, MASK, LABELS)
    for kwargs in GENERATE:
        expected = hf.generate(IDS, attention_mask=MASK, **kwargs)
        assert torch.equal(cove.generate(IDS, attention_mask=MASK, **kwargs), expected), kwargs


def test_cove_checkpoint_loads_in_transformers(checkpoint, tmp_path):
    cove = AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    cove.save_pretrained(tmp_path)
    hf = _hf(tmp_path)
    compare_forward(hf, cove, IDS, MASK, LABELS)
    for kwargs in GENERATE[:2]:
        expected = hf.generate(IDS, attention_mask=MASK, **kwargs)
        assert torch.equal(cove.generate(IDS, attention_mask=MASK, **kwargs), expected)


def test_base_model_and_heads(checkpoint, tmp_path):
    dec = torch.tensor([[2, 0, 5, 6], [2, 0, 9, 10]])
    with torch.no_grad():
        a = transformers.BartModel.from_pretrained(checkpoint).eval()(
            input_ids=IDS, attention_mask=MASK, decoder_input_ids=dec)
        b = AutoModel.from_pretrained(checkpoint)(IDS, MASK, decoder_input_ids=dec)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state, rtol=0, atol=1e-5)

    torch.manual_seed(1)
    clf = transformers.BartForSequenceClassification(transformers.BartConfig(**SMALL,
                                                                             num_labels=3))
    clf.eval().save_pretrained(tmp_path / "clf")
    ours = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf")
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        a, b = clf(IDS, MASK, labels=labels), ours(IDS, MASK, labels=labels)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-5)

    qa = transformers.BartForQuestionAnswering(transformers.BartConfig(**SMALL))
    qa.eval().save_pretrained(tmp_path / "qa")
    ours = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa")
    span = dict(start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 9]))
    with torch.no_grad():
        a, b = qa(IDS, MASK, **span), ours(IDS, MASK, **span)
    torch.testing.assert_close(b.start_logits, a.start_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.end_logits, a.end_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-5)


def test_cached_decoding_matches_the_full_forward(checkpoint):
    model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    dec = torch.tensor([[2, 0, 5, 6, 7], [2, 0, 9, 10, 2]])
    with torch.no_grad():
        full = model(IDS, MASK, decoder_input_ids=dec).logits
        cache = model.new_cache(2, 5)
        enc = model.get_encoder()(IDS, MASK)
        steps = [model(attention_mask=MASK, encoder_outputs=enc,
                       decoder_input_ids=dec[:, i:i + 1], past_key_values=cache,
                       use_cache=True).logits for i in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


def test_gradients_match(checkpoint):
    compare_gradients(_hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint),
                      IDS, MASK, LABELS)
