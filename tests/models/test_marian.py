"""Marian against transformers: tiny random checkpoints (shared and separate decoder
vocabularies) saved by each library and loaded by the other; logits, loss, greedy and beam."""

import pytest
import torch
import transformers

from cove.models import AutoModel, AutoModelForSeq2SeqLM
from cove.models.marian import MarianMTModel, sinusoidal_positions
from tests.models.seq2seq import compare_forward, compare_gradients

SMALL = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
             decoder_ffn_dim=37, max_position_embeddings=64, dropout=0.0, pad_token_id=98,
             decoder_start_token_id=98, eos_token_id=0, forced_eos_token_id=0,
             scale_embedding=True, activation_function="swish")
IDS = torch.tensor([[5, 6, 7, 8, 9, 0], [10, 11, 12, 0, 98, 98]])
MASK = (IDS != 98).long()
LABELS = torch.tensor([[5, 6, 7, 0], [9, 0, -100, -100]])
GENERATE = [dict(max_new_tokens=10),
            dict(max_new_tokens=10, num_beams=3, length_penalty=0.6),
            dict(max_new_tokens=10, num_beams=3, no_repeat_ngram_size=2, min_length=4,
                 num_return_sequences=2)]


@pytest.fixture(scope="module", params=["shared", "separate"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("marian")
    torch.manual_seed(0)
    extra = {} if request.param == "shared" else dict(
        share_encoder_decoder_embeddings=False, decoder_vocab_size=120)
    model = transformers.MarianMTModel(transformers.MarianConfig(**SMALL, **extra))
    with torch.no_grad():
        model.final_logits_bias.normal_()
    model.save_pretrained(folder)
    return folder


def _hf(folder):
    return transformers.MarianMTModel.from_pretrained(folder).eval()


def test_transformers_checkpoint_loads_in_cove(checkpoint):
    hf, cove = _hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    assert type(cove) is MarianMTModel
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


def test_base_model_and_positions(checkpoint):
    dec = torch.tensor([[98, 5, 6], [98, 9, 10]])
    with torch.no_grad():
        a = transformers.MarianModel.from_pretrained(checkpoint).eval()(
            input_ids=IDS, attention_mask=MASK, decoder_input_ids=dec)
        b = AutoModel.from_pretrained(checkpoint)(IDS, MASK, decoder_input_ids=dec)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state, rtol=0, atol=1e-5)
    for dim in (32, 33):
        expected = transformers.models.marian.modeling_marian.MarianSinusoidalPositionalEmbedding(
            64, dim).create_weight()
        assert torch.equal(sinusoidal_positions(64, dim), expected)


def test_gradients_match(checkpoint):
    compare_gradients(_hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint),
                      IDS, MASK, LABELS)


def test_inputs_embeds_are_scaled_as_transformers_does(checkpoint):
    """transformers scales caller-given decoder_inputs_embeds by sqrt(d_model) in Marian's
    decoder, but not caller-given inputs_embeds in its encoder: the same logits either way."""
    hf, cove = _hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    gen = torch.Generator().manual_seed(5)
    embeds = torch.randn(2, 6, SMALL["d_model"], generator=gen)
    decoder_embeds = torch.randn(2, 3, SMALL["d_model"], generator=gen)
    with torch.no_grad():
        a = hf(inputs_embeds=embeds, attention_mask=MASK, decoder_inputs_embeds=decoder_embeds)
        b = cove(inputs_embeds=embeds, attention_mask=MASK, decoder_inputs_embeds=decoder_embeds)
        unscaled = cove(inputs_embeds=embeds, attention_mask=MASK,
                        decoder_inputs_embeds=decoder_embeds / SMALL["d_model"] ** 0.5)
    torch.testing.assert_close(b.encoder_last_hidden_state, a.encoder_last_hidden_state,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-5)
    assert not torch.allclose(unscaled.logits, a.logits, atol=1e-3)  # the scale matters here
