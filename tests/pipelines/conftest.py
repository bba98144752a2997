"""Tiny random BERT models saved by transformers, with a hand-written WordPiece vocabulary.

transformers is the oracle: each test builds `transformers.pipeline` and `cove.pipeline` on the
same folder and compares their outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# A fixed vocabulary (the WordPiece trainer's order is not stable across processes).
VOCAB = """[PAD] [UNK] [CLS] [SEP] [MASK] the quick brown fox jump ##s ##ed ##ing over lazy
dog hello world , . ! ? ; : ' - this is a tiny corpus token ##izer split text into piece become
id i love hate movie film good bad great terrible was it not very so and or but cat sat on mat
1 2 3 a b c d e f g h i j k l m n o p q r s t u v w x y z ##a ##b ##c ##d ##e ##f ##g ##h ##i
##j ##k ##l ##m ##n ##o ##p ##q ##r ##s ##t ##u ##v ##w ##x ##y ##z""".split()

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37, "max_position_embeddings": 64}
LABELS = {0: "negative", 1: "neutral", 2: "positive"}

TEXTS = [
    "I love this movie!",
    "this film was terrible",
    "the quick brown fox jumps over the lazy dog.",
    "hello",
    "it was not very good, but not bad either; the cat sat on the mat.",
    "great",
    "tokenizer splits text into pieces",
    "so bad",
]
MASKED = [
    "the quick brown [MASK] jumps over the lazy dog.",
    "i [MASK] this movie",
    "[MASK]",
    "the cat sat on the [MASK] and it was very good",
]


def write_tokenizer(folder: Path) -> None:
    words = list(dict.fromkeys(VOCAB))
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}))


def randomize(model, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def build(root: Path) -> dict[str, Path]:
    """Folders: classifier (3 labels), single (1 label), mlm, base, distil (DistilBERT)."""
    import transformers

    vocab_size = len(dict.fromkeys(VOCAB))
    out = {}
    for name, cls, extra in [
        ("classifier", transformers.BertForSequenceClassification,
         {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}),
        ("single", transformers.BertForSequenceClassification, {"num_labels": 1}),
        ("mlm", transformers.BertForMaskedLM, {}),
        ("base", transformers.BertModel, {}),
        ("distil", transformers.DistilBertForSequenceClassification,
         {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}),
    ]:
        if name == "distil":
            config = transformers.DistilBertConfig(
                vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                max_position_embeddings=64, **extra)
        else:
            config = transformers.BertConfig(vocab_size=vocab_size, **TINY, **extra)
        model = randomize(cls(config), seed=len(out))
        folder = root / name
        model.save_pretrained(folder)
        write_tokenizer(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("pipelines"))


# -- token classification (appended) -----------------------------------------------------------
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
NER_TEXTS = [
    "hello world, the quick brown fox jumped over the lazy dog.",
    "tokenizer splits text into pieces",
    "i love xyzzy and qwerty in kjfd",
    "the cat € sat on the mat",
    "bob",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


@pytest.fixture(scope="session")
def ner_folder(tmp_path_factory) -> Path:
    """A tiny random BertForTokenClassification with B-/I- tags."""
    import torch
    import transformers

    config = transformers.BertConfig(
        vocab_size=len(dict.fromkeys(VOCAB)), **TINY, id2label=NER_LABELS,
        label2id={v: k for k, v in NER_LABELS.items()})
    model = randomize(transformers.BertForTokenClassification(config), seed=11)
    # Standard LayerNorms, and a classifier centred on the test texts: every tag occurs.
    tokenizer = transformers.BertTokenizerFast(vocab={w: i for i, w in
                                                      enumerate(dict.fromkeys(VOCAB))})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
        hidden = torch.cat([model.bert(**tokenizer(t, return_tensors="pt")).last_hidden_state[0]
                            for t in NER_TEXTS])
        logits = model.classifier(hidden)
        mean, std = logits.mean(0), logits.std(0)
        model.classifier.bias.sub_(mean).div_(std)
        model.classifier.weight.div_(std[:, None])
    folder = tmp_path_factory.mktemp("ner") / "ner"
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder


# -- question answering (appended) -------------------------------------------------------------
QA_CONTEXT = ("the quick brown fox jumped over the lazy dog. hello world, this is a tiny corpus: "
              "the cat sat on the mat and it was very good. i love this film, but xyzzy was "
              "terrible!")


@pytest.fixture(scope="session")
def qa_folder(tmp_path_factory) -> Path:
    """A tiny random BertForQuestionAnswering."""
    import transformers

    config = transformers.BertConfig(vocab_size=len(dict.fromkeys(VOCAB)), **TINY)
    model = randomize(transformers.BertForQuestionAnswering(config), seed=21)
    folder = tmp_path_factory.mktemp("qa") / "qa"
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder
