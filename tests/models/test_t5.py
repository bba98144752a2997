"""T5 v1.0 (ReLU, tied and scaled head) and v1.1 / Flan-T5 (gated GELU, a head of its own)
against transformers: tiny random checkpoints saved by each library and loaded by the other;
encoder states, logits, loss, and greedy and beam-search outputs."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from cove.models import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, T5EncoderModel
from cove.models.t5 import T5ForConditionalGeneration, relative_position_bucket
from tests.models.seq2seq import compare_forward, compare_gradients

SMALL = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
             num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
             decoder_start_token_id=0, dropout_rate=0.0)


def _save_v10(folder):
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(
        transformers.T5Config(**SMALL, feed_forward_proj="relu")).save_pretrained(folder)


def _save_v11(folder):
    """As Flan-T5 checkpoints are: tie_word_embeddings false and lm_head.weight of its own."""
    torch.manual_seed(1)
    transformers.T5ForConditionalGeneration(transformers.T5Config(
        **SMALL, feed_forward_proj="gated-gelu", tie_word_embeddings=False)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    config.pop("scale_decoder_outputs", None)
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"] = torch.randn(SMALL["vocab_size"], SMALL["d_model"]) * 0.5
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module", params=["v1.0", "v1.1"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param.replace(".", ""))
    (_save_v10 if request.param == "v1.0" else _save_v11)(folder)
    return folder


IDS = torch.tensor([[5, 6, 7, 8, 9, 1], [10, 11, 12, 1, 0, 0]])
MASK = (IDS != 0).long()
LABELS = torch.tensor([[3, 4, 5, 6, 1], [7, 8, 1, -100, -100]])

GENERATE = [dict(max_new_tokens=10),
            dict(max_new_tokens=10, num_beams=3, length_penalty=0.6),
            dict(max_new_tokens=10, num_beams=3, num_return_sequences=2, early_stopping=True),
            dict(max_length=9, min_length=6, num_beams=2),
            dict(max_new_tokens=6, num_beams=2, use_cache=False),
            dict(max_new_tokens=10, no_repeat_ngram_size=2),
            dict(max_new_tokens=10, num_beams=3, no_repeat_ngram_size=2, length_penalty=2.0),
            dict(max_new_tokens=8, num_beams=2, forced_bos_token_id=7, forced_eos_token_id=1),
            dict(max_new_tokens=8, repetition_penalty=1.5, eos_token_id=[1, 74])]


def _hf(folder):
    return transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()


def test_transformers_checkpoint_loads_in_cove(checkpoint):
    hf = _hf(checkpoint)
    cove = AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    assert type(cove) is T5ForConditionalGeneration
    tied = json.loads((checkpoint / "config.json").read_text()).get("tie_word_embeddings", True)
    assert (cove.lm_head.weight is cove.shared.weight) == tied
    compare_forward(hf, cove, IDS, MASK, LABELS)
    for kwargs in GENERATE:
        expected = hf.generate(IDS, attention_mask=MASK, **kwargs)
        got = cove.generate(IDS, attention_mask=MASK, **kwargs)
        assert torch.equal(got, expected), kwargs


def test_sampling_matches_with_the_same_seed(checkpoint):
    hf, cove = _hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    kwargs = dict(attention_mask=MASK, do_sample=True, top_k=20, temperature=0.8,
                  max_new_tokens=8)
    torch.manual_seed(3)
    expected = hf.generate(IDS, **kwargs)
    torch.manual_seed(3)
    assert torch.equal(cove.generate(IDS, **kwargs), expected)


def test_generate_from_decoder_prefix_or_encoder_outputs(checkpoint):
    hf, cove = _hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    prefix = torch.tensor([[0, 7], [0, 9]])
    for kwargs in (dict(max_new_tokens=6), dict(max_new_tokens=6, num_beams=2)):
        expected = hf.generate(IDS, attention_mask=MASK, decoder_input_ids=prefix, **kwargs)
        got = cove.generate(IDS, attention_mask=MASK, decoder_input_ids=prefix, **kwargs)
        assert torch.equal(got, expected)
    with torch.no_grad():
        encoded = cove.get_encoder()(IDS, MASK)
    plain = cove.generate(IDS, attention_mask=MASK, max_new_tokens=6)
    again = cove.generate(attention_mask=MASK, encoder_outputs=encoded, max_new_tokens=6)
    assert torch.equal(again, plain)
    half = AutoModelForSeq2SeqLM.from_pretrained(checkpoint, dtype="bfloat16")
    assert half.generate(IDS, attention_mask=MASK, max_new_tokens=4, num_beams=2).shape[0] == 2


def test_generate_scores_match(checkpoint):
    hf, cove = _hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    for kwargs in (dict(num_beams=3, length_penalty=0.6), dict(num_beams=1)):
        kwargs.update(max_new_tokens=6, return_dict_in_generate=True, output_scores=True)
        a = hf.generate(IDS, attention_mask=MASK, **kwargs)
        b = cove.generate(IDS, attention_mask=MASK, **kwargs)
        assert torch.equal(b.sequences, a.sequences)
        for x, y in zip(b.scores, a.scores, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
        if kwargs["num_beams"] > 1:
            torch.testing.assert_close(b.sequences_scores, a.sequences_scores, rtol=0, atol=1e-5)
            assert torch.equal(b.beam_indices, a.beam_indices[:, :b.beam_indices.shape[1]])


def test_generate_returns_encoder_decoder_fields(checkpoint):
    hf = transformers.T5ForConditionalGeneration.from_pretrained(
        checkpoint, attn_implementation="eager").eval()  # SDPA returns no attention weights
    cove = AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    for num_beams in (1, 2):
        kwargs = dict(attention_mask=MASK, max_new_tokens=4, num_beams=num_beams,
                      return_dict_in_generate=True, output_attentions=True,
                      output_hidden_states=True)
        a, b = hf.generate(IDS, **kwargs), cove.generate(IDS, **kwargs)
        assert type(b).__name__ == type(a).__name__
        assert torch.equal(b.sequences, a.sequences)
        for name in ("encoder_attentions", "encoder_hidden_states"):
            for x, y in zip(b[name], a[name], strict=True):
                torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
        for name in ("decoder_attentions", "cross_attentions", "decoder_hidden_states"):
            assert len(b[name]) == len(a[name]), name
            for step_b, step_a in zip(b[name], a[name], strict=True):
                for x, y in zip(step_b, step_a, strict=True):
                    torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


def test_cove_checkpoint_loads_in_transformers(checkpoint, tmp_path):
    cove = AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    cove.save_pretrained(tmp_path)
    hf = _hf(tmp_path)
    compare_forward(hf, cove, IDS, MASK, LABELS)
    for kwargs in GENERATE[:2]:
        assert torch.equal(cove.generate(IDS, **kwargs), hf.generate(IDS, **kwargs)), kwargs


def test_flan_t5_resaved_by_transformers_keeps_its_head(tmp_path_factory):
    """transformers 5.x writes tie_word_embeddings true, scale_decoder_outputs false and the
    head's own weights when it saves a Flan-T5 model: the head stays untied."""
    folder, again = tmp_path_factory.mktemp("v11"), tmp_path_factory.mktemp("v11_resaved")
    _save_v11(folder)
    hf = _hf(folder)
    hf.save_pretrained(again)
    cove = AutoModelForSeq2SeqLM.from_pretrained(again)
    assert cove.lm_head.weight is not cove.shared.weight
    compare_forward(hf, cove, IDS, MASK, LABELS)


def test_gradients_match(checkpoint):
    compare_gradients(_hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint),
                      IDS, MASK, LABELS)


def test_cached_decoding_matches_the_full_forward(checkpoint):
    model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    dec = torch.tensor([[0, 3, 4, 5, 6], [0, 7, 8, 9, 2]])
    with torch.no_grad():
        full = model(IDS, MASK, decoder_input_ids=dec).logits
        cache = model.new_cache(2, 5)
        enc = model.encoder(IDS, MASK)
        steps = [model(attention_mask=MASK, encoder_outputs=enc, decoder_input_ids=dec[:, i:i + 1],
                       past_key_values=cache, use_cache=True).logits for i in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    assert all(kv is not None for kv in cache.cross_attention_cache)


def test_base_and_encoder_models(checkpoint):
    hf_base = transformers.T5Model.from_pretrained(checkpoint).eval()
    base = AutoModel.from_pretrained(checkpoint)
    dec = torch.tensor([[0, 3, 4], [0, 7, 8]])
    with torch.no_grad():
        a = hf_base(input_ids=IDS, attention_mask=MASK, decoder_input_ids=dec)
        b = base(input_ids=IDS, attention_mask=MASK, decoder_input_ids=dec)
        torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state, rtol=0, atol=1e-5)
        enc = T5EncoderModel.from_pretrained(checkpoint)(IDS, MASK).last_hidden_state
        torch.testing.assert_close(enc, a.encoder_last_hidden_state, rtol=0, atol=1e-5)


def test_config_and_buckets():
    config = AutoConfig.for_model("t5", feed_forward_proj="gated-gelu")
    assert (config.is_gated_act, config.dense_act_fn, config.num_decoder_layers) == \
        (True, "gelu_new", 6)
    assert config.hidden_size == 512 and config.num_attention_heads == 8
    rel = torch.arange(-40, 41)[None, :]
    for bidirectional in (True, False):
        expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
        assert torch.equal(relative_position_bucket(rel, bidirectional, 32, 128), expected)
    with pytest.raises(ValueError):
        AutoConfig.for_model("t5", feed_forward_proj="gelu-gated")
