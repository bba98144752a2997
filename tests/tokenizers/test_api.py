"""Call options, special-token management, saving and chat templates, against transformers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from tests.tokenizers.conftest import LONG_TEXT, TEXTS


def _same(ours, theirs) -> None:
    """Two BatchEncodings hold the same keys and values (lists, arrays or tensors)."""
    assert list(ours.keys()) == list(theirs.keys())
    for key in theirs:
        a, b = ours[key], theirs[key]
        if isinstance(b, torch.Tensor):
            assert isinstance(a, torch.Tensor) and a.dtype == b.dtype, key
            assert torch.equal(a, b), key
        elif isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype, key
            assert a.shape == b.shape and (a == b).all(), key
        else:
            assert a == b, key


@pytest.fixture(scope="module")
def fresh(fixtures):
    """fresh(kind, **kwargs): a new (transformers, cove) pair, for tests that change them."""
    from transformers import AutoTokenizer as HFAutoTokenizer

    from cove.tokenizers import AutoTokenizer

    def load(kind: str, **kwargs):
        return (HFAutoTokenizer.from_pretrained(str(fixtures[kind]), **kwargs),
                AutoTokenizer.from_pretrained(str(fixtures[kind]), **kwargs))

    return load


PADDING_CASES = [
    dict(padding=True),
    dict(padding="longest", padding_side="left"),
    dict(padding="max_length", max_length=40, truncation=True),
    dict(padding="max_length", truncation=True),  # model_max_length, where the model has one
    dict(padding=True, pad_to_multiple_of=8),
    dict(padding=False, truncation=True, max_length=12),
    dict(max_length=10),  # max_length alone truncates
    dict(padding=True, return_attention_mask=False),
    dict(padding=True, return_token_type_ids=True),
    dict(padding=True, return_token_type_ids=False, return_special_tokens_mask=True),
    dict(padding=True, add_special_tokens=False),
]


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2", "llama", "t5", "minilm"])
@pytest.mark.parametrize("case", range(len(PADDING_CASES)))
def test_padding_truncation_and_tensors(pair, kind, case):
    hf, cove = pair(kind)
    options = PADDING_CASES[case]
    if hf.pad_token is None and options.get("padding"):
        with pytest.raises(ValueError, match="padding token"):
            cove(TEXTS[:5], **options)
        return
    batch = TEXTS[:40]
    if hf.model_max_length > 10**20 and options.get("padding") == "max_length" \
            and "max_length" not in options:
        options = {**options, "padding": True}
    _same(cove(batch, **options), hf(batch, **options))
    _same(cove(batch, TEXTS[40:80], **options), hf(batch, TEXTS[40:80], **options))
    for tensors in ("pt", "np"):
        if options.get("padding"):
            _same(cove(batch, return_tensors=tensors, **options),
                  hf(batch, return_tensors=tensors, **options))
        _same(cove(TEXTS[3], return_tensors=tensors, **options),
              hf(TEXTS[3], return_tensors=tensors, **options))


TRUNCATION_CASES = [
    dict(truncation=True, max_length=24),
    dict(truncation="longest_first", max_length=30, stride=5),
    dict(truncation="only_second", max_length=40, stride=10),
    dict(truncation="only_first", max_length=40),
    dict(truncation="only_second", max_length=32, stride=8, padding="max_length"),
]


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2", "llama", "minilm"])
@pytest.mark.parametrize("case", range(len(TRUNCATION_CASES)))
def test_overflow_with_stride(pair, kind, case):
    """Long contexts split into overlapping windows, as question answering does."""
    hf, cove = pair(kind)
    options = dict(TRUNCATION_CASES[case], return_overflowing_tokens=True,
                   return_offsets_mapping=True)
    if options.get("padding") and hf.pad_token is None:
        return
    questions = ["What does the fox do?", "Where is the café?", "日本語?"]
    contexts = [LONG_TEXT, LONG_TEXT[:300], "short context"]
    if options["truncation"] == "only_first":
        questions, contexts = contexts, questions
    ours, theirs = cove(questions, contexts, **options), hf(questions, contexts, **options)
    _same(ours, theirs)
    assert len(ours["input_ids"]) > len(questions)  # it did overflow
    for i in range(len(ours["input_ids"])):
        assert ours.sequence_ids(i) == theirs.sequence_ids(i)
        assert ours.word_ids(i) == theirs.word_ids(i)
    single = dict(truncation=True, max_length=20, stride=4, return_overflowing_tokens=True)
    _same(cove(LONG_TEXT, **single), hf(LONG_TEXT, **single))
    if hf.pad_token is not None:
        _same(cove([LONG_TEXT, "short"], padding=True, return_tensors="pt", **single),
              hf([LONG_TEXT, "short"], padding=True, return_tensors="pt", **single))


def test_truncation_side_and_long_input_warning(fresh):
    hf, cove = fresh("bert", truncation_side="left", padding_side="left")
    _same(cove(TEXTS[:20], truncation=True, max_length=9, padding=True),
          hf(TEXTS[:20], truncation=True, max_length=9, padding=True))
    # longer than model_max_length (64) without truncation: encoded whole, as transformers does
    _same(cove(LONG_TEXT), hf(LONG_TEXT))
    _same(cove(LONG_TEXT, truncation=True), hf(LONG_TEXT, truncation=True))


def test_text_target_gives_labels(pair):
    hf, cove = pair("t5")
    _same(cove(TEXTS[:5], text_target=TEXTS[5:10], padding=True, return_tensors="pt"),
          hf(TEXTS[:5], text_target=TEXTS[5:10], padding=True, return_tensors="pt"))
    _same(cove(text_target=TEXTS[:3]), hf(text_target=TEXTS[:3]))


def test_pad_method(pair):
    for kind in ("bert", "t5"):
        hf, cove = pair(kind)
        rows = [hf(t) for t in TEXTS[:6]]
        for options in (dict(), dict(padding="max_length", max_length=50),
                        dict(pad_to_multiple_of=16, return_tensors="pt"),
                        dict(padding_side="left", return_tensors="np")):
            _same(cove.pad([dict(r) for r in rows], **options),
                  hf.pad([dict(r) for r in rows], **options))
        _same(cove.pad({"input_ids": [r["input_ids"] for r in rows]}),
              hf.pad({"input_ids": [r["input_ids"] for r in rows]}))
        tensors = [{"input_ids": torch.tensor(r["input_ids"])} for r in rows]
        _same(cove.pad(tensors), hf.pad(tensors))


def test_batch_encoding_object(pair):
    _, cove = pair("bert")
    batch = cove(["Hello world", "the quick brown fox jumps"], padding=True,
                 return_tensors="pt")
    assert isinstance(batch, dict)
    assert batch.input_ids is batch["input_ids"] and batch.input_ids.dtype == torch.int64
    assert batch.to("cpu") is batch and batch["attention_mask"].device.type == "cpu"
    assert batch.n_sequences == 1 and batch.is_fast
    assert batch[0].ids == batch["input_ids"][0].tolist()
    clone = pickle.loads(pickle.dumps(batch))
    assert torch.equal(clone["input_ids"], batch["input_ids"])
    assert clone.tokens(1) == batch.tokens(1)
    with pytest.raises(AttributeError):
        _ = batch.not_a_key
    with pytest.raises(ValueError, match="padding=True"):
        cove(["short", "a much longer text here"], return_tensors="pt")
    assert batch.word_ids(1)[:3] == [None, 0, 1]
    assert batch.char_to_token(1, 4) == 2


def test_pickle_and_copy(pair):
    import copy

    hf, cove = pair("gpt2_added")
    assert cove.think_token == hf.think_token == "<think>"
    assert cove.think_token_id == hf.think_token_id
    for clone in (pickle.loads(pickle.dumps(cove)), copy.deepcopy(cove)):
        assert type(clone) is type(cove)
        _same(clone(TEXTS[:20]), hf(TEXTS[:20]))
        assert clone.think_token == "<think>"
        assert clone.special_tokens_map == hf.special_tokens_map


@pytest.mark.parametrize("kind", ["bert", "roberta", "llama", "t5"])
def test_misc_methods(pair, kind):
    hf, cove = pair(kind)
    ids = hf("Hello world, naïve 日本", "pair")["input_ids"]
    assert cove.convert_ids_to_tokens(ids[1]) == hf.convert_ids_to_tokens(ids[1])
    assert cove.get_special_tokens_mask(ids, already_has_special_tokens=True) == \
        hf.get_special_tokens_mask(ids, already_has_special_tokens=True)
    assert cove.max_len_single_sentence == hf.max_len_single_sentence
    assert cove.max_len_sentences_pair == hf.max_len_sentences_pair
    assert cove.vocab == hf.vocab and cove.added_tokens_encoder == hf.added_tokens_encoder
    assert cove.is_fast and bool(cove)
    assert repr(cove) == repr(hf)
    assert cove.convert_tokens_to_string(["a", "b"]) == hf.convert_tokens_to_string(["a", "b"])
    assert cove.clean_up_tokenization("a , b . c 's") == hf.clean_up_tokenization("a , b . c 's")


def test_direct_construction(fixtures):
    """Classes built from in-memory vocabularies or a tokenizers.Tokenizer, as in transformers."""
    import transformers
    from tokenizers import Tokenizer

    import cove.tokenizers as ct

    vocab = {t: i for i, t in enumerate(
        (fixtures["bert"] / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1])}
    gpt2 = Tokenizer.from_file(str(fixtures["minilm"] / "tokenizer.json"))
    bpe = json.loads((fixtures["gpt2tiny"] / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in
              (fixtures["gpt2tiny"] / "merges.txt").read_text().splitlines()[1:] if line]
    cases = [
        (transformers.BertTokenizerFast(vocab=vocab, do_lower_case=False),
         ct.BertTokenizerFast(vocab=vocab, do_lower_case=False)),
        (transformers.DistilBertTokenizerFast(vocab=vocab),
         ct.DistilBertTokenizerFast(vocab=vocab)),
        (transformers.GPT2TokenizerFast(vocab=bpe, merges=merges, add_prefix_space=True),
         ct.GPT2TokenizerFast(vocab=bpe, merges=merges, add_prefix_space=True)),
        (transformers.RobertaTokenizerFast(vocab=bpe, merges=merges),
         ct.RobertaTokenizerFast(vocab=bpe, merges=merges)),
        (transformers.PreTrainedTokenizerFast(tokenizer_object=gpt2, unk_token="[UNK]",
                                              model_max_length=20),
         ct.PreTrainedTokenizerFast(tokenizer_object=gpt2, unk_token="[UNK]",
                                    model_max_length=20)),
    ]
    for hf, cove in cases:
        assert type(cove).__name__ == type(hf).__name__
        _same(cove(TEXTS[:40], TEXTS[40:80], return_offsets_mapping=True),
              hf(TEXTS[:40], TEXTS[40:80], return_offsets_mapping=True))
        assert cove.all_special_tokens == hf.all_special_tokens


def test_bad_inputs(pair):
    hf, cove = pair("bert")
    for bad in (5, [1, 2], None):
        with pytest.raises(ValueError):
            hf(bad)
        with pytest.raises(ValueError):
            cove(bad)
    with pytest.raises(ValueError, match="does not match"):
        cove(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="text_pair"):
        cove(["a", "b"], "c")
    with pytest.raises(ValueError, match="is not a valid"):
        cove("a", padding="sideways")
    assert cove.tokenize("Hello world", "pair") == hf.tokenize("Hello world", "pair")
    assert cove.tokenize("Hello world", add_special_tokens=True) == \
        hf.tokenize("Hello world", add_special_tokens=True)
    assert cove.encode(["a b", "c"]) == hf.encode(["a b", "c"])


def test_decode_tensors_and_arrays(pair):
    hf, cove = pair("roberta")
    batch = hf(TEXTS[:8], padding=True, return_tensors="pt")["input_ids"]
    assert cove.batch_decode(batch, skip_special_tokens=True) == \
        hf.batch_decode(batch, skip_special_tokens=True)
    assert cove.decode(batch[0]) == hf.decode(batch[0])
    assert cove.decode(batch[0].numpy()) == hf.decode(batch[0].numpy())
    assert cove.batch_decode([]) == []


def test_add_tokens_and_special_tokens(fresh):
    for kind in ("bert", "gpt2", "llama"):
        hf, cove = fresh(kind)
        for tok in (hf, cove):
            assert tok.add_tokens(["newword", "<ent>"]) == 2
            assert tok.add_tokens("newword") == 0
            assert tok.add_special_tokens({"pad_token": "<PAD>",
                                           "extra_special_tokens": ["<tool>", "<end_tool>"]}) \
                == 3
        assert cove.pad_token == hf.pad_token and cove.pad_token_id == hf.pad_token_id
        assert cove.extra_special_tokens == hf.extra_special_tokens
        assert cove.all_special_ids == hf.all_special_ids
        assert len(cove) == len(hf)
        text = "a newword <ent> then <tool>call<end_tool> and <PAD>"
        _same(cove(text), hf(text))
        _same(cove([text, "x"], padding=True), hf([text, "x"], padding=True))
        ids = hf(text)["input_ids"]
        assert cove.decode(ids) == hf.decode(ids)
        assert cove.decode(ids, skip_special_tokens=True) == \
            hf.decode(ids, skip_special_tokens=True)
        _same(cove(text, split_special_tokens=True), hf(text, split_special_tokens=True))


def test_special_token_assignment(fresh):
    hf, cove = fresh("gpt2")
    for tok in (hf, cove):
        assert tok.pad_token is None and tok.pad_token_id is None
        tok.pad_token = tok.eos_token
    assert cove.pad_token_id == hf.pad_token_id == 50256
    _same(cove(TEXTS[:4], padding=True), hf(TEXTS[:4], padding=True))
    for tok in (hf, cove):
        tok.pad_token_id = 198
    assert cove.pad_token == hf.pad_token
    assert cove.special_tokens_map == hf.special_tokens_map


def test_add_bos_eos_switches(fresh):
    hf, cove = fresh("llama")
    for tok in (hf, cove):
        tok.add_eos_token = True
    _same(cove("Hello there", "pair"), hf("Hello there", "pair"))
    for tok in (hf, cove):
        tok.add_bos_token = False
    _same(cove("Hello there"), hf("Hello there"))
    hf, cove = fresh("gpt2tiny", add_bos_token=True)
    _same(cove(TEXTS[:5]), hf(TEXTS[:5]))


def test_loading_options(fixtures, fresh):
    from cove.tokenizers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

    hf, cove = fresh("minilm", model_max_length=16, pad_token="[MASK]")
    assert cove.model_max_length == hf.model_max_length == 16
    _same(cove(TEXTS[:10], padding=True, truncation=True),
          hf(TEXTS[:10], padding=True, truncation=True))
    direct = BertTokenizerFast.from_pretrained(str(fixtures["minilm"]))
    assert type(direct).__name__ == "BertTokenizer"
    generic = PreTrainedTokenizerFast(tokenizer_file=str(fixtures["minilm"] / "tokenizer.json"))
    assert generic("hello")["input_ids"][0] == 101 and "token_type_ids" not in generic("hello")
    single = AutoTokenizer.from_pretrained(str(fixtures["minilm"] / "tokenizer.json"))
    assert single.encode("hello world") == hf.encode("hello world")
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoTokenizer.from_pretrained(str(fixtures["minilm"]), trust_remote_code=True)
    empty = fixtures["minilm"].parent / "empty"
    empty.mkdir(exist_ok=True)
    with pytest.raises(OSError, match="found none of"):
        AutoTokenizer.from_pretrained(str(empty))


def test_inferred_classes_without_tokenizer_class(tmp_path, fixtures):
    """No tokenizer_class: config.json's model_type, else the vocabulary files, decide."""
    import shutil

    from transformers import AutoTokenizer as HFAutoTokenizer

    from cove.tokenizers import AutoTokenizer

    folder = tmp_path / "bertish"
    shutil.copytree(fixtures["bert"], folder)
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    hf, cove = HFAutoTokenizer.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))
    assert type(cove).__name__ == type(hf).__name__ == "BertTokenizer"
    _same(cove(TEXTS[:30]), hf(TEXTS[:30]))
    (folder / "config.json").unlink()
    assert AutoTokenizer.from_pretrained(str(folder))("Hello")["input_ids"] == \
        hf("Hello")["input_ids"]


def test_save_pretrained_round_trips(tmp_path, fresh):
    """Cove's files load in transformers (and back) to the same tokenizer."""
    from transformers import AutoTokenizer as HFAutoTokenizer

    from cove.tokenizers import AutoTokenizer

    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    for kind in ("bert", "mpnet", "roberta", "gpt2", "gpt2_added", "llama", "spm", "t5",
                 "minilm"):
        hf, cove = fresh(kind)
        for tok in (hf, cove):
            tok.add_tokens(["<ent>"])
            tok.add_special_tokens({"extra_special_tokens": ["<tool>"]})
            tok.chat_template = chatml
        files = cove.save_pretrained(tmp_path / f"cove-{kind}")
        names = sorted(p.rsplit("/", 1)[-1] for p in files)
        assert names == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
        hf.save_pretrained(tmp_path / f"hf-{kind}")
        config = json.loads((tmp_path / f"cove-{kind}" / "tokenizer_config.json").read_text())
        # the generic class is saved under its transformers 4 name, which both lines load
        assert config["tokenizer_class"] == {"TokenizersBackend": "PreTrainedTokenizerFast"}.get(
            type(hf).__name__, type(hf).__name__)
        loaded = {
            "hf<-cove": HFAutoTokenizer.from_pretrained(str(tmp_path / f"cove-{kind}")),
            "cove<-cove": AutoTokenizer.from_pretrained(str(tmp_path / f"cove-{kind}")),
            "cove<-hf": AutoTokenizer.from_pretrained(str(tmp_path / f"hf-{kind}")),
        }
        text = "Hello <ent> world <tool> naïve 日本 🙂"
        options = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
        expected = hf([text, *TEXTS[:30]], **options)
        for name, tok in loaded.items():
            assert type(tok).__name__ == type(hf).__name__, name
            _same(tok([text, *TEXTS[:30]], **options), expected)
            assert tok.special_tokens_map == hf.special_tokens_map, name
            assert tok.all_special_tokens == hf.all_special_tokens, name
            assert tok.model_max_length == hf.model_max_length, name
            assert tok.padding_side == hf.padding_side, name
            assert tok.chat_template == chatml, name
            assert tok.decode(expected["input_ids"][0], skip_special_tokens=True) == \
                hf.decode(expected["input_ids"][0], skip_special_tokens=True), name


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello! What is the capital of France? 🇫🇷"},
    {"role": "assistant", "content": "Paris, of course."},
    {"role": "user", "content": "Merci, and of 日本?"},
]


@pytest.fixture(scope="module")
def chat_pair(fresh):
    hf, cove = fresh("gpt2")
    for tok in (hf, cove):
        tok.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.chat_template = CHATML
    return hf, cove


@pytest.mark.parametrize("generation", [False, True])
def test_chat_template_chatml(chat_pair, generation):
    hf, cove = chat_pair
    text = cove.apply_chat_template(CONVERSATION, add_generation_prompt=generation,
                                    tokenize=False)
    assert text == hf.apply_chat_template(CONVERSATION, add_generation_prompt=generation,
                                          tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") == generation
    _same(cove.apply_chat_template(CONVERSATION, add_generation_prompt=generation),
          hf.apply_chat_template(CONVERSATION, add_generation_prompt=generation))
    assert cove.apply_chat_template(CONVERSATION, add_generation_prompt=generation,
                                    return_dict=False) == \
        hf.apply_chat_template(CONVERSATION, add_generation_prompt=generation, return_dict=False)
    batch = [CONVERSATION, CONVERSATION[:2]]
    hf.pad_token = cove.pad_token = "<|im_end|>"
    _same(cove.apply_chat_template(batch, add_generation_prompt=generation, padding=True,
                                   return_tensors="pt"),
          hf.apply_chat_template(batch, add_generation_prompt=generation, padding=True,
                                 return_tensors="pt"))


def test_chat_template_features(chat_pair, tmp_path):
    hf, cove = chat_pair
    prefill = [*CONVERSATION, {"role": "assistant", "content": "The capital is"}]
    assert cove.apply_chat_template(prefill, continue_final_message=True, tokenize=False) == \
        hf.apply_chat_template(prefill, continue_final_message=True, tokenize=False)
    tools_template = ("{% if tools %}{{ tools | tojson }}\n{% endif %}{{ bos_token }}"
                      "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                      "{{ strftime_now('%Y') | length }} {{ extra }}")
    tools = [{"type": "function", "function": {"name": "weather", "description": "Météo",
                                               "parameters": {"type": "object"}}}]
    for options in (dict(tools=tools), dict(extra="<b>&</b>"), dict()):
        assert cove.apply_chat_template(CONVERSATION, chat_template=tools_template,
                                        tokenize=False, **options) == \
            hf.apply_chat_template(CONVERSATION, chat_template=tools_template, tokenize=False,
                                   **options)

    def get_weather(city: str, unit: str = "celsius") -> str:
        """Get the weather.

        Args:
            city: The city to look up.
            unit: Celsius or fahrenheit.
        """
        return city

    assert cove.apply_chat_template(CONVERSATION, chat_template=tools_template, tokenize=False,
                                    tools=[get_weather]) == \
        hf.apply_chat_template(CONVERSATION, chat_template=tools_template, tokenize=False,
                               tools=[get_weather])
    generation = ("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
                  "{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n"
                  "{% endfor %}")
    _same(cove.apply_chat_template(CONVERSATION, chat_template=generation,
                                   return_assistant_tokens_mask=True),
          hf.apply_chat_template(CONVERSATION, chat_template=generation,
                                 return_assistant_tokens_mask=True))
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="roles must alternate"):
        cove.apply_chat_template(CONVERSATION, tokenize=False, chat_template=(
            "{{ raise_exception('roles must alternate') }}"))
    with pytest.raises(jinja2.exceptions.SecurityError):
        cove.apply_chat_template(CONVERSATION, tokenize=False, chat_template=(
            "{{ ''.__class__.__mro__[1].__subclasses__() }}"))
    with pytest.raises(jinja2.exceptions.SecurityError):
        cove.apply_chat_template(CONVERSATION, tokenize=False, chat_template=(
            "{% set x = messages.append(1) %}"))
    with pytest.raises(ValueError, match="chat_template is not set"):
        type(cove).from_pretrained(cove.name_or_path).apply_chat_template(CONVERSATION)


def test_chat_templates_from_files(tmp_path, fixtures):
    """chat_template.jinja, named templates in tokenizer_config.json, additional_chat_templates."""
    import shutil

    from transformers import AutoTokenizer as HFAutoTokenizer

    from cove.tokenizers import AutoTokenizer

    folder = tmp_path / "chat"
    shutil.copytree(fixtures["gpt2tiny"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "D{{ messages[0].content }}"},
                               {"name": "tool_use", "template": "T{{ tools | length }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    hf, cove = HFAutoTokenizer.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))
    assert cove.chat_template == hf.chat_template
    for options in (dict(), dict(tools=[{"name": "x"}]), dict(chat_template="tool_use", tools=[{"n": 1}, {"n": 2}])):
        assert cove.apply_chat_template(CONVERSATION, tokenize=False, **options) == \
            hf.apply_chat_template(CONVERSATION, tokenize=False, **options)
    (folder / "chat_template.jinja").write_text("J{{ messages | length }}")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "short.jinja").write_text("S")
    hf, cove = HFAutoTokenizer.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))
    assert cove.chat_template == hf.chat_template == {"default": "J{{ messages | length }}",
                                                      "short": "S"}
    assert cove.apply_chat_template(CONVERSATION, tokenize=False) == "J4"
    saved = cove.save_pretrained(tmp_path / "saved")
    assert any(p.endswith("additional_chat_templates/short.jinja") for p in saved)
    assert HFAutoTokenizer.from_pretrained(str(tmp_path / "saved")).chat_template == \
        cove.chat_template
