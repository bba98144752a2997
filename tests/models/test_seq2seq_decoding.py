"""What encoder-decoder decoding does beyond transformers' code path, checked against it:
a prompt's beams share one encoder row (cross-attention keys and values computed once per
prompt, the beams' queries attending together), and the LM head's decoding-step products
(weight @ x^T for a few rows, a transposed copy for one, oneDNN for 8 and more) and
the decoder layers' linears in decoding steps of 8 rows and more (oneDNN)."""

import pytest
import torch
import transformers
from torch import nn

from cove.models import AutoModelForSeq2SeqLM
from cove.models.cache import KVCache
from cove.models.seq2seq import EncoderDecoderCache, lm_logits, shared_rows, step_linear

T5 = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=16,
          decoder_start_token_id=0, dropout_rate=0.0)
BART = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
            decoder_ffn_dim=37, max_position_embeddings=64, dropout=0.0)
IDS = torch.tensor([[5, 6, 7, 8, 9, 1], [10, 11, 12, 1, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


@pytest.fixture(scope="module", params=["t5", "bart"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    if request.param == "t5":
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5))
    else:
        model = transformers.BartForConditionalGeneration(transformers.BartConfig(**BART))
    model.save_pretrained(folder)
    return folder


def _hf(folder):
    return transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()


def test_rows_sharing_an_encoder_row_attend_as_repeated_rows(checkpoint):
    model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    decoder_ids = torch.tensor([[0, 7, 8], [0, 9, 4], [0, 3, 3], [0, 5, 6]])
    with torch.no_grad():
        encoded = model.get_encoder()(IDS, MASK)
        repeated = (encoded[0].repeat_interleave(2, dim=0),)
        full = model(encoder_outputs=repeated, attention_mask=MASK.repeat_interleave(2, dim=0),
                     decoder_input_ids=decoder_ids, output_attentions=True)
        shared = model(encoder_outputs=(encoded[0],), attention_mask=MASK,
                       decoder_input_ids=decoder_ids, output_attentions=True)
    torch.testing.assert_close(shared.logits, full.logits, rtol=0, atol=1e-6)
    for a, b in zip(shared.cross_attentions, full.cross_attentions, strict=True):
        assert a.shape == b.shape == (4, 4, 3, IDS.shape[1])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="3 decoder rows cannot share 2 encoder rows"):
        model(encoder_outputs=(encoded[0],), attention_mask=MASK,
              decoder_input_ids=decoder_ids[:3])


@pytest.mark.parametrize("kwargs", [
    dict(num_beams=3, use_cache=False),
    dict(num_beams=2, num_return_sequences=2, use_cache=False),
    dict(num_beams=3, return_dict_in_generate=True, output_scores=True),
    dict(num_beams=4, return_dict_in_generate=True, output_scores=True),  # 8 rows: oneDNN
])
def test_beams_without_repeated_encoder_rows_match_transformers(checkpoint, kwargs):
    hf, cove = _hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    a = hf.generate(IDS, attention_mask=MASK, max_new_tokens=6, **kwargs)
    b = cove.generate(IDS, attention_mask=MASK, max_new_tokens=6, **kwargs)
    if kwargs.get("return_dict_in_generate"):
        assert torch.equal(b.sequences, a.sequences)
        torch.testing.assert_close(b.sequences_scores, a.sequences_scores, rtol=0, atol=1e-5)
    else:
        assert torch.equal(b, a)


def test_sampled_sequences_share_their_prompts_encoder_row(checkpoint):
    hf, cove = _hf(checkpoint), AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    kwargs = dict(attention_mask=MASK, do_sample=True, num_return_sequences=3,
                  max_new_tokens=6)
    torch.manual_seed(4)
    expected = hf.generate(IDS, **kwargs)
    torch.manual_seed(4)
    assert torch.equal(cove.generate(IDS, **kwargs), expected)


def _cache(layers=1, rows=4):
    return EncoderDecoderCache(KVCache(layers, rows, 2, 4, 8))


@pytest.mark.parametrize("rows", [1, 3, 8, 16, 17, 64, 65])
def test_decoding_lm_head_matches_the_linear(rows):
    torch.manual_seed(0)
    head = nn.Linear(64, 5000, bias=False)
    x = torch.randn(rows, 1, 64)
    with torch.no_grad():
        got = lm_logits(head, x, _cache())
        torch.testing.assert_close(got, head(x), rtol=0, atol=1e-5)
        assert got.shape == (rows, 1, 5000) and got.is_contiguous()
        head.weight.mul_(2)  # an in-place change: the kept transposed copy is remade
        torch.testing.assert_close(lm_logits(head, x, _cache()), head(x), rtol=0, atol=1e-5)
    # training (gradients) and full sequences go through the module itself
    y = lm_logits(head, x, _cache())
    y.sum().backward()
    assert head.weight.grad is not None


@pytest.mark.parametrize("rows", [1, 7, 8, 32, 65])
@pytest.mark.parametrize("bias", [False, True])
def test_decoding_step_linear_matches_the_module(rows, bias):
    torch.manual_seed(0)
    linear = nn.Linear(48, 80, bias=bias)
    x = torch.randn(rows, 1, 48)
    with torch.no_grad():
        got = step_linear(linear, x)
        assert got.shape == (rows, 1, 80)
        torch.testing.assert_close(got, linear(x), rtol=0, atol=1e-5)
        # more than one position per row (a prompt) goes through the module itself
        prompt = torch.randn(2, rows, 48)
        assert torch.equal(step_linear(linear, prompt), linear(prompt))
    # with gradients: the module, so its backward
    step_linear(linear, x).sum().backward()
    assert linear.weight.grad is not None


def test_shared_cross_attention_cache_reorders_within_a_prompt_only():
    cache = _cache(rows=4)
    k = torch.randn(2, 2, 5, 4)
    cache.set_cross(0, k, k + 1)
    cache.reorder(torch.tensor([1, 1, 3, 2]))  # beams move within their prompt: kept as is
    assert cache.cross(0)[0] is k
    with pytest.raises(ValueError, match="only move within their group"):
        cache.reorder(torch.tensor([2, 1, 0, 3]))
    assert shared_rows(6, 3) == 2
