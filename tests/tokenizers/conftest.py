"""Tokenizer folders of each kind, built once per session, and the texts they are compared on.

transformers is the oracle: each test loads the same folder with transformers.AutoTokenizer and
cove.tokenizers.AutoTokenizer and compares. The real files (GPT-2, Mistral's SentencePiece
model, all-MiniLM-L6-v2) come from tests/.data/, filled by tests/fetch_data.py (`make test`
runs it through the tests/.data/.fetched target).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / ".data"

# A fixed, hand-written WordPiece vocabulary (the WordPiece trainer's order is not stable).
BERT_VOCAB = """[PAD] [UNK] [CLS] [SEP] [MASK] the quick brown fox jump ##s ##ed ##ing over lazy
dog hello world , . ! ? ; : ' " - ( ) [ ] / this is a tiny corpus token ##izer split text into
piece become id na ##ive cafe café de ##ja déjà vu 日 本 語 中 文 un ##ic ##ode 1 2 3 4 5 6 7 8 9
0 ##0 ##1 ##2 ##3 ##4 ##5 ##6 ##7 ##8 ##9 a b c d e f g h i j k l m n o p q r s t u v w x y z
##a ##b ##c ##d ##e ##f ##g ##h ##i ##j ##k ##l ##m ##n ##o ##p ##q ##r ##s ##t ##u ##v ##w
##x ##y ##z Hello World The The é è ï ü ö ñ ç ##é ##ï ##ü å ø ß π λ Ω 🙂 $ % & * + = @ # _
""".split()

CORPUS = [
    "Hello world, this is a tiny corpus.", "The quick brown fox jumps over the lazy dog!",
    "Tokenizers split text into pieces; pieces become ids.", "naïve café déjà vu — ünïcödé",
    "日本語のテキストも少し。中文也有一点。", "emoji 🙂🚀👩‍👩‍👧 and tabs\tand\nnewlines",
    "numbers 12345 67.89 and CODE_like_identifiers() {x: [1, 2]}", "  leading and trailing  ",
    "Ünïcode ÅØß πλΩ résumé coöperate", "She said: \"don't\" — it's fine, isn't it?",
]

HAND_WRITTEN = [
    "", " ", "a", "Hello", "hello world", "Hello, world!", "HELLO WORLD", "  two  spaces  ",
    "\ttab\tseparated\tvalues", "line one\nline two\r\nline three", "\n\n\n", "trailing space ",
    " leading space", "multiple     spaces     here", "naïve café", "déjà vu", "Ünïcödé",
    "Crème brûlée à la française", "straße", "ÅNGSTRÖM", "e\u0301 composed vs é", "ﬁ ligature",
    "日本語", "中文字符测试", "한국어 텍스트", "Русский текст", "العربية", "עברית", "ไทย",
    "emoji 🙂", "🚀🚀🚀", "family 👨‍👩‍👧‍👦 zwj", "flags 🇫🇷🇯🇵", "skin 👍🏽", "❤️ heart",
    "tokenizers", "tokenization", "un-believ-able", "don't can't won't", "e.g. i.e. etc.",
    "$100.00 and 50% off!", "email@example.com", "https://example.com/path?q=1&r=2#frag",
    "snake_case_name camelCaseName PascalName", "x = f(y) + g[z] * 2", "{\"json\": [1, 2.5, null]}",
    "<html><body>tag</body></html>", "C:\\Windows\\path", "1234567890", "3.14159 2.71828",
    "[CLS] inside text [SEP]", "<s> and </s> in text", "<|endoftext|> marker", "[MASK] me",
    "<unk> <pad> <mask>", "a <think>b  <sp>  c CamelWord CamelWords xCamelWord <extra_id_1>",
    "zero\u200bwidth", "nbsp\u00a0space", "ideographic\u3000space",
    "control\x07bell", "soft\u00adhyphen", "mixed 日本 and English and 🙂",
    "a" * 300, "word " * 120, "日本" * 80, "🙂" * 60,
    "The quick brown fox jumps over the lazy dog. " * 20,
]

POOL = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Hello", "world",
        "naïve", "café", "déjà", "vu", "日本", "語", "中文", "🙂", "🚀", "ß", "Ω", "tokenizer",
        "123", "4.5", "(", ")", ",", ".", "!", "?", "'s", "n't", "-", "_", "x", "Y", "résumé",
        "[CLS]", "<s>", "</s>", "<|endoftext|>", "straße", "ÅØ", "ï", "\u0301", "👩‍💻"]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", "", " \n ", "   "]


def texts(n_random: int = 240, seed: int = 1234) -> list[str]:
    """A few hundred varied strings: hand-written ones, then seeded random mixtures."""
    rng = random.Random(seed)
    out = list(CORPUS) + list(HAND_WRITTEN)
    for _ in range(n_random):
        words = [rng.choice(POOL) for _ in range(rng.randint(1, 25))]
        text = ""
        for w in words:
            text += w + rng.choice(SEPARATORS)
        if rng.random() < 0.3:
            text = rng.choice(SEPARATORS) + text
        out.append(text)
    return out


TEXTS = texts()
LONG_TEXT = " ".join(CORPUS * 12)

KINDS = ["bert", "bert_cased", "bert_strip", "bert_nochinese", "distilbert", "mpnet",
         "gpt2tiny", "gpt2_prefix", "gpt2_added", "roberta", "roberta_prefix", "gpt2", "llama",
         "llama_legacy", "llama_noprefix", "llama_json", "spm", "t5", "t5_sentinels", "minilm",
         "minilm_cased"]


def _added(content: str, *, special: bool = False, normalized: bool = False,
           lstrip: bool = False, rstrip: bool = False, single_word: bool = False) -> dict:
    return {"content": content, "special": special, "normalized": normalized, "lstrip": lstrip,
            "rstrip": rstrip, "single_word": single_word}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


def _need_data() -> None:
    if not (DATA / ".fetched").exists():
        pytest.fail("tests/.data is missing: run `make tests/.data/.fetched` "
                    "(or `python tests/fetch_data.py`) to download the real tokenizer files")


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    """Folder per tokenizer kind (only vocabulary files, or a tokenizer.json for minilm)."""
    _need_data()
    from tokenizers import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    out: dict[str, Path] = {}

    vocab = list(dict.fromkeys(BERT_VOCAB))
    for name, config in [
        ("bert", {"do_lower_case": True, "model_max_length": 64}),
        ("bert_cased", {"do_lower_case": False}),
        ("bert_strip", {"do_lower_case": False, "strip_accents": True}),
        ("bert_nochinese", {"do_lower_case": True, "tokenize_chinese_chars": False}),
        ("distilbert", {"tokenizer_class": "DistilBertTokenizer", "do_lower_case": False}),
        ("mpnet", {"tokenizer_class": "MPNetTokenizer", "model_max_length": 40}),
    ]:
        folder = root / name
        folder.mkdir()
        words = ["<s>", "<pad>", "</s>", *vocab, "<mask>"] if name == "mpnet" else vocab
        (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
        _write_json(folder / "tokenizer_config.json", {"tokenizer_class": "BertTokenizer", **config})
        out[name] = folder

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 5, vocab_size=420, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>",
                                            "<|endoftext|>"])
    for name, config in [
        ("gpt2tiny", {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
                      "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}),
        ("roberta", {"tokenizer_class": "RobertaTokenizer", "model_max_length": 48}),
        ("roberta_prefix", {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": True}),
        ("gpt2_prefix", {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": True,
                         "add_bos_token": True, "pad_token": "<pad>"}),
        # added tokens and a model-specific special token declared in the configuration
        ("gpt2_added", {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>",
                        "extra_special_tokens": {"think_token": "<think>"},
                        "added_tokens_decoder": {
                            "5": _added("<|endoftext|>", special=True),
                            "420": _added("<think>"),
                            "421": _added("<sp>", special=True, lstrip=True, rstrip=True),
                            "422": _added("CamelWord", normalized=True, single_word=True)}}),
    ]:
        folder = root / name
        folder.mkdir()
        bpe.save_model(str(folder))
        _write_json(folder / "tokenizer_config.json", config)
        out[name] = folder

    folder = root / "gpt2"
    folder.mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(DATA / "gpt2" / f, folder / f)
    _write_json(folder / "tokenizer_config.json",
                {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024})
    out["gpt2"] = folder

    folder = root / "llama"
    folder.mkdir()
    shutil.copy(DATA / "mistral" / "tokenizer.model", folder / "tokenizer.model")
    _write_json(folder / "tokenizer_config.json",
                {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,
                 "add_eos_token": False, "model_max_length": 4096})
    out["llama"] = folder
    for name, config in [
        ("llama_legacy", {"tokenizer_class": "LlamaTokenizer", "legacy": True,
                          "add_bos_token": True, "add_eos_token": True}),
        ("llama_noprefix", {"tokenizer_class": "LlamaTokenizer", "add_prefix_space": False,
                            "pad_token": "</s>", "padding_side": "right"}),
        ("spm", {}),  # no class anywhere: the model read as SentencePiece runs it
    ]:
        out[name] = root / name
        shutil.copytree(folder, out[name])
        _write_json(out[name] / "tokenizer_config.json", config)

    folder = root / "t5"
    folder.mkdir()
    import sentencepiece as spm

    (root / "corpus.txt").write_text("\n".join(CORPUS * 20) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"), model_prefix=str(folder / "spiece"), vocab_size=200,
        model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2)
    (folder / "spiece.vocab").unlink()
    _write_json(folder / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer"})
    out["t5"] = folder
    out["t5_sentinels"] = root / "t5_sentinels"
    shutil.copytree(folder, out["t5_sentinels"])
    _write_json(out["t5_sentinels"] / "tokenizer_config.json",
                {"tokenizer_class": "T5Tokenizer", "extra_ids": 3,
                 "additional_special_tokens": ["<extra_id_0>", "<extra_id_1>", "<extra_id_2>"]})

    folder = root / "minilm"
    shutil.copytree(DATA / "minilm", folder)
    out["minilm"] = folder
    # a tokenizer.json that disagrees with its configuration: the class's settings win
    out["minilm_cased"] = root / "minilm_cased"
    shutil.copytree(folder, out["minilm_cased"])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    _write_json(out["minilm_cased"] / "tokenizer_config.json",
                {**config, "do_lower_case": False, "strip_accents": False})

    # Llama's older tokenizer.json layout (a Prepend normalizer, no pre-tokenizer), as many
    # Llama and Mistral repositories still ship it
    from tokenizers import Tokenizer, normalizers
    from transformers import AutoTokenizer as HFAutoTokenizer

    backend = Tokenizer.from_str(
        HFAutoTokenizer.from_pretrained(str(out["llama"])).backend_tokenizer.to_str())
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    out["llama_json"] = root / "llama_json"
    out["llama_json"].mkdir()
    backend.save(str(out["llama_json"] / "tokenizer.json"))
    special = {str(i): _added(t, special=True) for i, t in enumerate(["<unk>", "<s>", "</s>"])}
    _write_json(out["llama_json"] / "tokenizer_config.json",
                {"tokenizer_class": "LlamaTokenizerFast", "legacy": False,
                 "add_bos_token": True, "added_tokens_decoder": special,
                 "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    return out


@pytest.fixture(scope="session")
def pair(fixtures):
    """pair(kind, **kwargs) -> (transformers tokenizer, cove tokenizer), cached per session."""
    from transformers import AutoTokenizer as HFAutoTokenizer

    from cove.tokenizers import AutoTokenizer

    cache: dict = {}

    def load(kind: str, **kwargs):
        key = (kind, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = (HFAutoTokenizer.from_pretrained(str(fixtures[kind]), **kwargs),
                          AutoTokenizer.from_pretrained(str(fixtures[kind]), **kwargs))
        return cache[key]

    return load
