"""Encoder-decoder tokenizers against transformers 5: T5 (Unigram tokenizer.json, `<extra_id_N>`
sentinels), BART (byte-level BPE, from vocab.json + merges.txt or tokenizer.json) and Marian
(source.spm + target.spm + vocab.json, shared or separate vocabularies, `text_target=`).

Tiny SentencePiece models are trained here; transformers writes the folders Cove loads.
"""

from __future__ import annotations

import copy
import json
import pickle
import random
from pathlib import Path

import pytest
import transformers

from cove.tokenizers import AutoTokenizer, MarianTokenizer
from tests.tokenizers.conftest import CORPUS, texts

TEXTS = texts(n_random=60) + [
    ">>fr<< bonjour le monde", ">>fr<<", "a >>fr<< b", ">>fr< x", "hello</s>world", " </s> ",
    "<pad><unk>x", "<extra_id_0> hello <extra_id_4> x</s>", "summarize: the cat", "a <mask> b",
]
MORE = ["le chat est sur le tapis", "der Hund ist müde und schläft", "Tokenizers split text"]
TRAIN = CORPUS[:4] + MORE  # few characters: the tiny models still cover them all


def _train(folder: Path, name: str, size: int, extra: tuple[str, ...] = (), **ids: int) -> Path:
    import sentencepiece as spm

    corpus = folder / f"{name}.txt"
    corpus.write_text("\n".join(TRAIN * 20 + list(extra) * 100) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / name), vocab_size=size,
        model_type="unigram", hard_vocab_limit=False, bos_id=-1, num_threads=1, minloglevel=2,
        **ids)
    (folder / f"{name}.vocab").unlink()
    return folder / f"{name}.model"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    import sentencepiece as spm
    from tokenizers import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("seq2seq-tokenizers")
    out: dict[str, Path] = {}
    # T5: transformers converts spiece.model into the tokenizer.json it saves
    t5_source = root / "t5_source"
    t5_source.mkdir()
    _train(t5_source, "spiece", 120, pad_id=0, eos_id=1, unk_id=2)
    (t5_source / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 5}))
    transformers.AutoTokenizer.from_pretrained(t5_source).save_pretrained(root / "t5")
    out["t5"] = root / "t5"

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 5, vocab_size=400, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    out["bart_files"] = root / "bart_files"
    out["bart_files"].mkdir()
    bpe.save_model(str(out["bart_files"]))
    (out["bart_files"] / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BartTokenizer"}))
    transformers.AutoTokenizer.from_pretrained(out["bart_files"]).save_pretrained(root / "bart")
    out["bart"] = root / "bart"

    # Marian: two models (eos 0, unk 1, no pad), the vocabulary the union of their pieces
    spms = root / "spm"
    spms.mkdir()
    source = _train(spms, "source", 90, eos_id=0, unk_id=1, pad_id=-1)
    # (trained mostly on one sentence: it cuts that one into fewer pieces than the source)
    target = _train(spms, "target", 70, (MORE[0],), eos_id=0, unk_id=1, pad_id=-1)
    shared: dict[str, int] = {}
    separate = []
    for path in (source, target):
        processor = spm.SentencePieceProcessor(model_file=str(path))
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        for piece in pieces:
            shared.setdefault(piece, len(shared))
        separate.append({**{p: i for i, p in enumerate(pieces)}, "<pad>": len(pieces)})
    shared.update({"<pad>": len(shared), ">>fr<<": len(shared) + 1, ">>de<<": len(shared) + 2})
    for name, vocabs in (("marian", [shared]), ("marian_separate", separate)):
        for i, vocab in enumerate(vocabs):
            (spms / f"{name}{i}.json").write_text(json.dumps(vocab))
        kwargs = ({"target_vocab_file": str(spms / f"{name}1.json"), "separate_vocabs": True}
                  if len(vocabs) == 2 else {})
        tokenizer = transformers.MarianTokenizer(str(source), str(target),
                                                 str(spms / f"{name}0.json"), source_lang="en",
                                                 target_lang="fr", **kwargs)
        tokenizer.save_pretrained(root / name)
        out[name] = root / name
    return out


def pair(folders, kind: str):
    return transformers.AutoTokenizer.from_pretrained(folders[kind]), \
        AutoTokenizer.from_pretrained(folders[kind])


@pytest.mark.parametrize("kind", ["t5", "bart", "bart_files", "marian", "marian_separate"])
def test_ids_equal_transformers(folders, kind):
    theirs, ours = pair(folders, kind)
    assert type(ours).__name__ == {"t5": "T5Tokenizer", "marian": "MarianTokenizer",
                                   "marian_separate": "MarianTokenizer"}.get(kind,
                                                                             "RobertaTokenizer")
    assert len(ours) == len(theirs) and ours.vocab_size == theirs.vocab_size
    for name in ("eos_token_id", "pad_token_id", "unk_token_id", "bos_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]
    pairs = (TEXTS[:20], TEXTS[20:40])
    assert ours(*pairs)["input_ids"] == theirs(*pairs)["input_ids"]
    assert ours(text_target=TEXTS)["input_ids"] == theirs(text_target=TEXTS)["input_ids"]
    batch = {"padding": True, "truncation": True, "max_length": 12}
    assert dict(ours(TEXTS[:6], text_target=MORE * 2, **batch)) == \
        dict(theirs(TEXTS[:6], text_target=MORE * 2, **batch))
    rng = random.Random(0)
    for _ in range(100):
        ids = [rng.randrange(len(theirs)) for _ in range(rng.randrange(1, 12))]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == \
                theirs.decode(ids, skip_special_tokens=skip), ids


def test_t5_sentinels(folders):
    theirs, ours = pair(folders, "t5")
    sentinels = [f"<extra_id_{i}>" for i in range(5)]
    assert ours.get_sentinel_tokens() == sentinels
    assert ours.get_sentinel_token_ids() == theirs.convert_tokens_to_ids(sentinels)
    assert ours.get_sentinel_token_ids() == list(range(len(ours) - 1, len(ours) - 6, -1))


def test_marian_target_uses_the_target_model(folders):
    _, ours = pair(folders, "marian")
    source = ours.spm_source.encode(MORE[0], out_type=str)
    target = ours.spm_target.encode(MORE[0], out_type=str)
    assert source != target  # the two models cut this text differently
    assert ours.convert_ids_to_tokens(ours(MORE[0])["input_ids"]) == [*source, "</s>"]
    assert ours.convert_ids_to_tokens(ours(text_target=MORE[0])["input_ids"]) == [*target, "</s>"]
    encoding = ours(MORE[0], text_target=MORE[1])
    assert encoding["labels"] == ours(text_target=MORE[1])["input_ids"]
    # the language code stays one token; the listed codes are the shared vocabulary's
    assert ours.tokenize(">>de<< hello")[0] == ">>de<<"
    assert ours.supported_language_codes == [">>fr<<", ">>de<<"]


@pytest.mark.parametrize("kind", ["marian", "marian_separate"])
def test_marian_save_reload_and_pickle(folders, kind, tmp_path):
    theirs, ours = pair(folders, kind)
    files = ours.save_pretrained(tmp_path)
    names = {Path(f).name for f in files}
    assert names >= {"tokenizer_config.json", "source.spm", "target.spm", "vocab.json"}
    assert ("target_vocab.json" in names) == (kind == "marian_separate")
    assert "tokenizer.json" not in names
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "MarianTokenizer" and config["target_lang"] == "fr"
    for reloaded in (transformers.AutoTokenizer.from_pretrained(tmp_path),
                     AutoTokenizer.from_pretrained(tmp_path),
                     MarianTokenizer.from_pretrained(tmp_path),
                     pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours)):
        assert reloaded(TEXTS[:30])["input_ids"] == theirs(TEXTS[:30])["input_ids"]
        assert reloaded(text_target=MORE)["input_ids"] == theirs(text_target=MORE)["input_ids"]


def test_marian_errors(folders, tmp_path):
    _, ours = pair(folders, "marian")
    assert not ours.is_fast
    with pytest.raises(NotImplementedError, match="offsets"):
        ours("hello", return_offsets_mapping=True)
    folder = folders["marian"]
    with pytest.raises(ValueError, match="target SentencePiece model"):
        MarianTokenizer(source_spm=folder / "source.spm", vocab=folder / "vocab.json")
    with pytest.raises(ValueError, match="separate_vocabs=True needs target_vocab_file"):
        MarianTokenizer(source_spm=folder / "source.spm", target_spm=folder / "target.spm",
                        vocab=folder / "vocab.json", separate_vocabs=True)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    with pytest.raises(ValueError, match="unknown token '<unk>' must be in the vocabulary"):
        MarianTokenizer(source_spm=folder / "source.spm", target_spm=folder / "target.spm",
                        vocab=tmp_path / "vocab.json")
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "MarianTokenizer"}))
    (missing / "source.spm").write_bytes((folder / "source.spm").read_bytes())
    with pytest.raises(OSError, match="MarianTokenizer needs target.spm, vocab.json"):
        AutoTokenizer.from_pretrained(missing)
