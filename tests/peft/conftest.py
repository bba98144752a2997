"""Tiny random models saved by transformers (Llama with grouped-query attention, GPT-2 with its
Conv1D layers, a BERT classifier), loaded by each library; the reference `peft` is the oracle.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers

from cove.models import AutoModelForCausalLM, AutoModelForSequenceClassification
from tests.pipelines.conftest import LABELS, TINY, VOCAB, write_tokenizer
from tests.pipelines.conftest import randomize as randomize_bert
from tests.pipelines.test_text_generation import build_decoders

KINDS = ("llama", "gpt2", "bert")
COVE_AUTO = {"llama": AutoModelForCausalLM, "gpt2": AutoModelForCausalLM,
             "bert": AutoModelForSequenceClassification}
REF_AUTO = {"llama": transformers.AutoModelForCausalLM, "gpt2": transformers.AutoModelForCausalLM,
            "bert": transformers.AutoModelForSequenceClassification}
TOLERANCE = 1e-5


@pytest.fixture(scope="session", autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft-bases")
    out = build_decoders(root, kinds=("llama", "gpt2"))
    config = transformers.BertConfig(vocab_size=len(dict.fromkeys(VOCAB)), **TINY,
                                     id2label=LABELS,
                                     label2id={v: k for k, v in LABELS.items()})
    folder = root / "bert"
    randomize_bert(transformers.BertForSequenceClassification(config), seed=4) \
        .save_pretrained(folder)
    write_tokenizer(folder)
    out["bert"] = folder
    return out


def load(folders: dict[str, Path], kind: str, library: str) -> torch.nn.Module:
    """A fresh base model of `kind` from Cove ("cove") or transformers ("ref")."""
    auto = COVE_AUTO[kind] if library == "cove" else REF_AUTO[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return auto.from_pretrained(str(folders[kind]))


def batch(kind: str) -> dict[str, torch.Tensor]:
    """Two rows of token ids (valid in every tiny vocabulary) with their attention mask."""
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 60, (2, 6), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def randomize_adapter(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every trainable (adapter) weight random values, so the adapter changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def logits(model: torch.nn.Module, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(kind)).logits


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = TOLERANCE) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()
