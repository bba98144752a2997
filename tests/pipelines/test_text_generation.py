"""text-generation: cove.pipeline against transformers.pipeline on tiny random Llama and GPT-2
checkpoints saved by transformers, with a byte-level BPE tokenizer (tokenizer.json, trained once
per session) and a ChatML chat template.

The Llama tokenizer has a pad token and adds <s>; the GPT-2 one has no pad token (transformers
cannot batch with it) and adds nothing. Weights are scaled up so next-token distributions are
peaked: float noise between the two implementations cannot flip a greedy choice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import cove
from cove.generation import GenerationConfig
from cove.pipelines import SUPPORTED_TASKS, TextGenerationPipeline
from tests.generation.test_model_parity import randomize

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world, how are you today?",
          "once upon a time there was a tiny model", "what is the capital of france? paris.",
          "i love this movie, it was great", "the cat sat on the mat"] * 3
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<s>"]
VOCAB = 300
PROMPTS = ["the quick brown", "hello", "once upon a time there was", "i love",
           "what is the capital of france?"]
CHAT = [{"role": "user", "content": "hello there"}]
CHATS = [CHAT,
         [{"role": "system", "content": "you are a tiny model"},
          {"role": "user", "content": "what is the capital of france?"}],
         [*CHAT, {"role": "assistant", "content": "the"}],  # a prefill: continued
         [*CHAT, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "bye"}]]
NEW = 8


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()


def train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def build_decoders(root: Path, kinds=("llama", "smollm3", "gpt2")) -> dict[str, Path]:
    """Folders "llama", "smollm3" and "gpt2": model, tokenizer.json, tokenizer_config.json."""
    trained = train_tokenizer().to_str()
    ids = {s: Tokenizer.from_str(trained).token_to_id(s) for s in SPECIAL}
    out = {}
    for kind in kinds:
        folder = root / kind
        folder.mkdir()
        tok = Tokenizer.from_str(trained)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML,
                  "eos_token": "<|endoftext|>", "model_max_length": 128}
        if kind in ("llama", "smollm3"):
            tok.post_processor = processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", ids["<s>"])])
            config.update(bos_token="<s>", pad_token="<pad>")
            values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, bos_token_id=ids["<s>"],
                          eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<pad>"])
            if kind == "llama":
                model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**values))
            else:  # layer 1 NoPE and windowed; untied, or random weights only repeat
                model = transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config(
                    **values, no_rope_layer_interval=2, use_sliding_window=True,
                    sliding_window=4, tie_word_embeddings=False))
        else:
            config.update(bos_token="<|endoftext|>")
            model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
                vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
                tie_word_embeddings=False))
        tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        randomize(model, seed=3).save_pretrained(folder)
        out[kind] = folder
    return out


@pytest.fixture(scope="session")
def decoders_(tmp_path_factory) -> dict[str, Path]:
    return build_decoders(tmp_path_factory.mktemp("text-generation"))


def pair(folder: Path, **kwargs):
    return (cove.pipeline("text-generation", model=str(folder), **kwargs),
            transformers.pipeline("text-generation", model=str(folder), **kwargs))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def generators(request, decoders_):
    return pair(decoders_[request.param])


@pytest.fixture(scope="module")
def llama(decoders_):
    return pair(decoders_["llama"])


def padded(generators):
    """The pair, able to batch (GPT-2's tokenizer has no pad token: use eos, as transformers
    advises)."""
    for p in generators:
        if p.tokenizer.pad_token is None:
            p.tokenizer.pad_token = p.tokenizer.eos_token
    return generators


GREEDY = {"do_sample": False, "max_new_tokens": NEW}


def test_prompts_single_and_list(generators):
    ours, theirs = generators
    one = ours(PROMPTS[0], **GREEDY)
    assert isinstance(one, list) and len(one) == 1 and one[0]["generated_text"].startswith(
        PROMPTS[0])
    assert one == theirs(PROMPTS[0], **GREEDY)
    assert ours(PROMPTS, **GREEDY) == theirs(PROMPTS, **GREEDY)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_prompts_batched_and_generator(generators, batch_size):
    ours, theirs = padded(generators)
    expected = theirs(PROMPTS, **GREEDY, batch_size=batch_size)
    assert ours(PROMPTS, **GREEDY, batch_size=batch_size) == expected
    got = ours((p for p in PROMPTS), **GREEDY, batch_size=batch_size)
    assert not isinstance(got, list)
    assert list(got) == list(theirs((p for p in PROMPTS), **GREEDY, batch_size=batch_size))
    # Greedy batches (left-padded, sorted by length) give what each prompt gives alone.
    assert ours(PROMPTS, **GREEDY, batch_size=batch_size) == [ours(p, **GREEDY)
                                                              for p in PROMPTS]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_chats(generators, batch_size):
    ours, theirs = padded(generators)
    one = ours(CHAT, **GREEDY)
    assert one[0]["generated_text"][:-1] == CHAT
    assert one[0]["generated_text"][-1]["role"] == "assistant"
    assert one == theirs(CHAT, **GREEDY)
    assert ours(CHATS, **GREEDY, batch_size=batch_size) == theirs(CHATS, **GREEDY,
                                                                  batch_size=batch_size)
    # The prefilled final message is continued, not followed by a new one.
    continued = ours(CHATS[2], **GREEDY)[0]["generated_text"]
    assert len(continued) == 2 and continued[1]["content"].startswith("the")
    got = ours((c for c in CHATS), **GREEDY, batch_size=batch_size)
    assert list(got) == list(theirs((c for c in CHATS), **GREEDY, batch_size=batch_size))
    # A generator of messages is one chat.
    assert ours((m for m in CHATS[1]), **GREEDY) == theirs((m for m in CHATS[1]), **GREEDY)
    assert ours(CHATS, **GREEDY, batch_size=batch_size) == [ours(c, **GREEDY) for c in CHATS]


@pytest.mark.parametrize("kwargs", [
    {"return_full_text": False}, {"return_text": True}, {"return_tensors": True},
    {"continue_final_message": False}, {"continue_final_message": True},
    {"return_full_text": False, "continue_final_message": True},
    {"skip_special_tokens": False}, {"clean_up_tokenization_spaces": True},
])
def test_output_options(generators, kwargs):
    ours, theirs = generators
    chat = CHATS[2] if kwargs.get("continue_final_message") else CHATS[1]
    for inputs in (PROMPTS[2], chat):
        assert ours(inputs, **GREEDY, **kwargs) == theirs(inputs, **GREEDY, **kwargs)
    assert ours(PROMPTS[:3], **GREEDY, **kwargs) == theirs(PROMPTS[:3], **GREEDY, **kwargs)


def test_return_tensors_in_batches(llama):
    ours, theirs = llama
    got = ours(PROMPTS, **GREEDY, return_tensors=True, batch_size=3)
    # Without the batch's left padding: what each prompt gives alone.
    assert got == theirs(PROMPTS, **GREEDY, return_tensors=True)
    assert all(isinstance(t, int) for t in got[0][0]["generated_token_ids"])


def test_beams_and_returned_sequences(generators):
    ours, theirs = padded(generators)
    kwargs = {"do_sample": False, "max_new_tokens": 6, "num_beams": 3,
              "num_return_sequences": 2}
    got = ours(PROMPTS[:3], **kwargs, batch_size=3)
    assert [len(r) for r in got] == [2, 2, 2]
    assert got == theirs(PROMPTS[:3], **kwargs)
    assert ours(CHAT, **kwargs) == theirs(CHAT, **kwargs)
    # generate's other outputs go into each record, as transformers.
    extra = {"return_dict_in_generate": True, "output_scores": True}
    a, b = ours(PROMPTS[0], **kwargs, **extra), theirs(PROMPTS[0], **kwargs, **extra)
    assert [set(r) for r in a] == [set(r) for r in b] == [
        {"generated_text", "sequences_scores", "beam_indices"}] * 2
    for x, y in zip(a, b, strict=True):
        assert x["generated_text"] == y["generated_text"]
        assert x["beam_indices"] == y["beam_indices"]
        assert x["sequences_scores"] == pytest.approx(y["sequences_scores"], abs=1e-4)


def test_greedy_scores_in_records(llama):
    ours, theirs = llama
    extra = {"return_dict_in_generate": True, "output_scores": True, "max_new_tokens": 3,
             "do_sample": False}
    a, b = ours(PROMPTS[1], **extra), theirs(PROMPTS[1], **extra)
    assert set(a[0]) == set(b[0]) == {"generated_text", "scores"}
    assert a[0]["generated_text"] == b[0]["generated_text"]
    torch.testing.assert_close(torch.tensor(a[0]["scores"]), torch.tensor(b[0]["scores"]),
                               atol=1e-4, rtol=1e-4)


def test_sampling_shapes(llama):
    ours, _ = llama
    torch.manual_seed(0)
    got = ours(PROMPTS[:2], do_sample=True, top_k=20, temperature=0.9, max_new_tokens=5,
               num_return_sequences=3, batch_size=2)
    assert [len(r) for r in got] == [3, 3]
    for prompt, records in zip(PROMPTS, got, strict=False):
        for record in records:
            assert set(record) == {"generated_text"}
            assert record["generated_text"].startswith(prompt)
    tokens = ours(PROMPTS[0], do_sample=True, max_new_tokens=5, return_full_text=False)
    assert len(tokens) == 1 and isinstance(tokens[0]["generated_text"], str)


def test_generation_defaults_and_config(llama, decoders_):
    ours, theirs = llama
    # The pipeline's defaults for what nobody set (sampling ones only when sampling).
    assert ours._generate_kwargs({}) == theirs._prepare_generate_kwargs({})
    assert ours._generate_kwargs({"do_sample": False}) == \
        theirs._prepare_generate_kwargs({"do_sample": False})
    assert ours._generate_kwargs({"max_length": 30}) == \
        theirs._prepare_generate_kwargs({"max_length": 30})
    # A generation_config per call; construction kwargs; a call's config replaces them.
    a = ours(PROMPTS[0], generation_config=GenerationConfig(max_new_tokens=4, do_sample=False))
    b = theirs(PROMPTS[0], generation_config=transformers.GenerationConfig(max_new_tokens=4,
                                                                           do_sample=False))
    assert a == b
    ours2, theirs2 = pair(decoders_["llama"], max_new_tokens=5, do_sample=False,
                          repetition_penalty=1.5)
    assert ours2(PROMPTS) == theirs2(PROMPTS)
    assert ours2(PROMPTS[1], max_new_tokens=2) == theirs2(PROMPTS[1], max_new_tokens=2)
    assert ours2(PROMPTS[1], generation_config=GenerationConfig(max_new_tokens=3,
                                                                do_sample=False)) == \
        theirs2(PROMPTS[1], generation_config=transformers.GenerationConfig(max_new_tokens=3,
                                                                            do_sample=False))


def test_prefix_max_length_and_hole(generators):
    ours, theirs = generators
    for kwargs in [{"prefix": "hello world, "}, {"prefix": "hello ", "max_length": 14},
                   {"max_length": 12}, {"min_new_tokens": 4},
                   {"prefix": "once ", "max_length": 14, "add_special_tokens": True}]:
        args = {"do_sample": False, **({} if "max_length" in kwargs else {"max_new_tokens": 6}),
                **kwargs}
        assert ours(PROMPTS[0], **args) == theirs(PROMPTS[0], **args), kwargs
    # Tokenizer arguments: a prompt padded by the tokenizer keeps its attention mask.
    encode = {"tokenizer_encode_kwargs": {"padding": "max_length", "max_length": 10}}
    if ours.tokenizer.pad_token is not None:
        assert ours(PROMPTS[1], **GREEDY, **encode) == theirs(PROMPTS[1], **GREEDY, **encode)
    encode = {"tokenizer_encode_kwargs": {"truncation": True, "max_length": 3}}
    assert ours(PROMPTS[2], **GREEDY, **encode) == theirs(PROMPTS[2], **GREEDY, **encode)
    assert ours(CHATS[1], **GREEDY, **encode) == theirs(CHATS[1], **GREEDY, **encode)
    long_prompt = " ".join(CORPUS[:6] * 2)  # > 128 - 40 tokens
    args = {"do_sample": False, "max_new_tokens": 40, "handle_long_generation": "hole"}
    assert ours(long_prompt, **args) == theirs(long_prompt, **args)
    assert ours.tokenizer(long_prompt)["input_ids"].__len__() + 40 > 128


def test_stop_sequence(generators):
    ours, theirs = generators
    full = ours(PROMPTS[3], do_sample=False, max_new_tokens=20, return_full_text=False)
    new = full[0]["generated_text"]
    # A stop string the model does write: the first two ASCII letters in a row.
    stop = re.search(r"[a-z]{2}", new).group()
    kwargs = {"do_sample": False, "max_new_tokens": 20, "return_full_text": False}
    got = ours(PROMPTS[3], stop_sequence=stop, **kwargs)
    assert got == theirs(PROMPTS[3], stop_sequence=stop, **kwargs)
    assert stop in got[0]["generated_text"] and len(got[0]["generated_text"]) < len(new)
    # stop_strings reach generate with the tokenizer (transformers' pipeline forgets it).
    assert ours(PROMPTS[3], stop_strings=[stop], **kwargs) == got


def test_empty_prompt(decoders_):
    ours, theirs = pair(decoders_["gpt2"])  # nothing added: generation starts from bos
    assert ours("", **GREEDY) == theirs("", **GREEDY)


def test_no_pad_token_cannot_batch(decoders_):
    ours, theirs = pair(decoders_["gpt2"])
    assert ours.tokenizer.pad_token is None
    for p in (ours, theirs):
        with pytest.raises(ValueError, match="without pad_token cannot do batching"):
            p(PROMPTS, batch_size=2, **GREEDY)
    # batch_size 1: generate pads nothing (eos stands for the pad token)
    assert ours(PROMPTS[:2], **GREEDY) == theirs(PROMPTS[:2], **GREEDY)


def test_task_registration_and_padding_side(decoders_):
    from transformers.pipelines import SUPPORTED_TASKS as HF

    cls, head, default = SUPPORTED_TASKS["text-generation"]
    assert cls is TextGenerationPipeline and head == "causal-lm"
    assert default == HF["text-generation"]["default"]["model"][0]
    p = cove.pipeline(model=str(decoders_["llama"]))
    assert p.task == "text-generation" and p.tokenizer.padding_side == "left"
    from cove.models import AutoModelForCausalLM
    from cove.tokenizers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(decoders_["gpt2"]))
    tokenizer = AutoTokenizer.from_pretrained(str(decoders_["gpt2"]))
    q = cove.pipeline("text-generation", model=model, tokenizer=tokenizer)
    assert q(PROMPTS[0], **GREEDY) == pair(decoders_["gpt2"])[1](PROMPTS[0], **GREEDY)
    with pytest.raises(ValueError, match="cannot run"):
        cove.pipeline("text-generation", model=_classifier(decoders_))


def _classifier(decoders_) -> str:
    """A folder with a sequence classifier (no language model head)."""
    folder = decoders_["llama"].parent / "classifier"
    if not folder.exists():
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=16,
                                          num_hidden_layers=1, num_attention_heads=2,
                                          num_labels=2)
        transformers.LlamaForSequenceClassification(config).save_pretrained(folder)
    return str(folder)


def test_smollm3_folder(decoders_):
    """transformers 5's default text-generation family: a tiny SmolLM3 folder through the
    pipeline, greedy, alone and in left-padded batches, prompts and chats."""
    ours, theirs = pair(decoders_["smollm3"])
    assert type(ours.model).__name__ == type(theirs.model).__name__ == "SmolLM3ForCausalLM"
    assert ours(PROMPTS[2], **GREEDY) == theirs(PROMPTS[2], **GREEDY)
    assert ours(PROMPTS, **GREEDY, batch_size=3) == theirs(PROMPTS, **GREEDY, batch_size=3)
    assert ours(CHATS, **GREEDY, batch_size=2) == theirs(CHATS, **GREEDY, batch_size=2)


def test_wrong_inputs(llama):
    ours, _ = llama
    with pytest.raises(ValueError, match="list of"):
        ours({"role": "user", "content": "hi"})
    with pytest.raises(ValueError, match="bytes"):
        ours(b"hello", **GREEDY)
    with pytest.raises(ValueError, match="expects strings or chats"):
        ours([PROMPTS[0], 3], **GREEDY)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        ours([CHAT, [{"role": "user", "content": "x"}, {"role": "user"}]], **GREEDY)
    with pytest.raises(ValueError, match="mutually exclusive"):
        ours(PROMPTS[0], return_full_text=False, return_tensors=True)
    with pytest.raises(ValueError, match="mutually exclusive"):
        ours(PROMPTS[0], return_text=True, return_tensors=True)
    with pytest.raises(ValueError, match="handle_long_generation"):
        ours(PROMPTS[0], handle_long_generation="middle")
    with pytest.raises(ValueError, match="not used by the model"):
        ours(PROMPTS[0], max_new_token=3)
    for stop in (3, ["ok", 3]):  # (an int was a bare TypeError: not iterable)
        with pytest.raises(ValueError, match="stop_sequence must be a string or a list of "):
            ours(PROMPTS[0], stop_sequence=stop, **GREEDY)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -1"):
        ours(PROMPTS, batch_size=-1, **GREEDY)  # (gave a list of None)
    assert ours([], **GREEDY) == []


def test_keyword_inputs(llama):
    ours, theirs = llama
    assert ours(text_inputs=PROMPTS[1], **GREEDY) == theirs(text_inputs=PROMPTS[1], **GREEDY)


def test_real_smollm2_chat():
    """The real SmolLM2-135M-Instruct (from its GGUF): the greedy answer names Paris, alone and
    in a left-padded batch with a longer chat."""
    from cove.models import AutoModelForCausalLM
    from cove.tokenizers import AutoTokenizer
    from tests.models.test_gguf import SMOLLM2, SMOLLM2_NAME, need_data

    need_data()
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME,
                                                 dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2_NAME)
    chat = cove.pipeline("text-generation", model=model, tokenizer=tokenizer)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    other = [{"role": "system", "content": "You are a helpful assistant who answers briefly."},
             {"role": "user", "content": "Name a large animal that lives in the sea."}]
    alone = chat(question, do_sample=False, max_new_tokens=8)
    answer = alone[0]["generated_text"][-1]
    assert answer["role"] == "assistant" and "Paris" in answer["content"]
    both = chat([other, question], do_sample=False, max_new_tokens=8, batch_size=2)
    assert both[1] == alone
    assert both[0] == chat(other, do_sample=False, max_new_tokens=8)


def test_generator_read_one_batch_at_a_time(llama):
    """A stream of prompts is generated for a batch at a time: the first results come after
    `batch_size` prompts were read, not a longer chunk."""
    ours, _ = llama
    pulled = []

    def prompts():
        for p in PROMPTS:
            pulled.append(p)
            yield p

    results = ours(prompts(), batch_size=2, **GREEDY)
    first = next(results)
    assert pulled == PROMPTS[:2] and first == ours(PROMPTS[0], **GREEDY)
    assert len(list(results)) == len(PROMPTS) - 1
