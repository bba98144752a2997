"""Tiny random encoder-decoder models saved by transformers (T5, BART, Marian), with tokenizers
trained here: the folders the text2text, summarization and translation tests compare on."""

from __future__ import annotations

import json
from pathlib import Path

# Few characters, so that the tiny SentencePiece models cover them all.
CORPUS = [
    "the quick brown fox jumps over the lazy dog", "hello world, this is a tiny corpus",
    "le chat est sur le tapis", "der hund ist müde und schläft", "the cat sat on the mat",
    "a summary of the story: it was good", "translate english to german: the house is small",
]
T5_TASKS = {
    "summarization": {"prefix": "summarize: ", "num_beams": 2, "length_penalty": 2.0,
                      "no_repeat_ngram_size": 2, "min_length": 3, "early_stopping": True},
    "translation_en_to_de": {"prefix": "translate English to German: ", "num_beams": 3},
    "translation_en_to_fr": {"prefix": "translate English to French: "},
}
SIZES = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "encoder_ffn_dim": 48, "decoder_ffn_dim": 48,
         "max_position_embeddings": 64}


def _spm(folder: Path, name: str, size: int, **ids: int) -> Path:
    import sentencepiece as spm

    corpus = folder / f"{name}.txt"
    corpus.write_text("\n".join(CORPUS * 20) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / name), vocab_size=size,
        model_type="unigram", hard_vocab_limit=False, bos_id=-1, num_threads=1, minloglevel=2,
        **ids)
    return folder / f"{name}.model"


def randomize(model, seed: int, std: float):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def build(root: Path) -> dict[str, Path]:
    """Folders t5, bart, marian (and bart_mnli, a 3-label BART classifier)."""
    import shutil

    import transformers
    from tokenizers import ByteLevelBPETokenizer

    out: dict[str, Path] = {}
    work = root / "work"
    work.mkdir()

    # T5 v1.0 (ReLU, tied head): spiece.model, converted by transformers into tokenizer.json
    _spm(work, "spiece", 80, pad_id=0, eos_id=1, unk_id=2)
    spiece = work / "t5_tok"
    spiece.mkdir()
    shutil.copy(work / "spiece.model", spiece / "spiece.model")
    (spiece / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 4}))
    tokenizer = transformers.AutoTokenizer.from_pretrained(spiece)
    config = transformers.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, task_specific_params=T5_TASKS)
    out["t5"] = root / "t5"
    randomize(transformers.T5ForConditionalGeneration(config), 1, 0.5).save_pretrained(out["t5"])
    tokenizer.save_pretrained(out["t5"])

    # BART: byte-level BPE; a generation config with its own lengths, beams and forced tokens
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 5, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bart_tok = work / "bart_tok"
    bart_tok.mkdir()
    bpe.save_model(str(bart_tok))
    (bart_tok / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BartTokenizer"}))
    # (transformers 5's BartTokenizer(vocab_file=...) ignores the file: load the folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(bart_tok)
    config = transformers.BartConfig(vocab_size=len(tokenizer), **SIZES)
    model = randomize(transformers.BartForConditionalGeneration(config), 2, 0.3)
    model.generation_config = transformers.GenerationConfig(
        max_length=12, min_length=4, num_beams=2, no_repeat_ngram_size=3, length_penalty=1.5,
        forced_bos_token_id=0, forced_eos_token_id=2, early_stopping=True,
        decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    out["bart"] = root / "bart"
    model.save_pretrained(out["bart"])
    tokenizer.save_pretrained(out["bart"])
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    config = transformers.BartConfig(vocab_size=len(tokenizer), **SIZES, id2label=labels,
                                     label2id={v: k for k, v in labels.items()})
    out["bart_mnli"] = root / "bart_mnli"
    randomize(transformers.BartForSequenceClassification(config), 3, 0.3).save_pretrained(
        out["bart_mnli"])
    tokenizer.save_pretrained(out["bart_mnli"])

    # Marian: separate source and target models, one vocab.json (their pieces' union)
    import sentencepiece

    source = _spm(work, "source", 70, eos_id=0, unk_id=1, pad_id=-1)
    target = _spm(work, "target", 60, eos_id=0, unk_id=1, pad_id=-1)
    vocab: dict[str, int] = {}
    for path in (source, target):
        processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        for i in range(processor.get_piece_size()):
            vocab.setdefault(processor.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (work / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.MarianTokenizer(str(source), str(target), str(work / "vocab.json"),
                                             source_lang="en", target_lang="de")
    pad = vocab["<pad>"]
    # (an untied head: with a tied one, a random model mostly repeats its last token)
    config = transformers.MarianConfig(vocab_size=len(vocab), **SIZES, pad_token_id=pad,
                                       decoder_start_token_id=pad, eos_token_id=0,
                                       tie_word_embeddings=False)
    out["marian"] = root / "marian"
    model = randomize(transformers.MarianMTModel(config), 5, 0.1)
    model.generation_config.bad_words_ids = [[pad]]  # as OPUS-MT checkpoints have it
    model.save_pretrained(out["marian"])
    tokenizer.save_pretrained(out["marian"])
    for name in ("t5", "bart", "bart_mnli", "marian"):
        _readable_by_transformers_4(out[name])
    return out


def _readable_by_transformers_4(folder: Path) -> None:
    """transformers 5 saves extra special tokens as a list under `extra_special_tokens`,
    which 4.57 reads as a dict of named tokens: write them under 4.x's name."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
        path.write_text(json.dumps(config, indent=2))
