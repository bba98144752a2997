"""Shared by the serving tests: tiny models to serve, and pushing them to a live Hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers

MINILM = Path(__file__).resolve().parents[2] / ".data" / "minilm"


def tiny_sentence_model(folder: Path) -> Path:
    """A random 2-layer BERT with MiniLM's tokenizer and sentence-transformers' modules:
    mean pooling, then Normalize."""
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt"):
        shutil.copy(MINILM / name, folder / name)
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=128)).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    return folder


def push(live, repos: list[tuple[str, Path, bool]]) -> None:
    """Create each (repo id, folder, private) as alice on the live Hub and upload the folder."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=live.url, token=live.accounts.alice_write)
    for repo, folder, private in repos:
        api.create_repo(repo, private=private)
        api.upload_folder(repo_id=repo, folder_path=folder)


def greedy(llama, ids: list[int], n: int) -> tuple[list[int], str]:
    """Cove's greedy `generate`: the new token ids, and their text without the EOS."""
    model, tok = llama
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):]
    tokens = out.tolist()
    eos = model.generation_config.eos_token_id
    text_ids = tokens[:-1] if tokens and tokens[-1] == eos else tokens
    return tokens, tok.decode(text_ids, skip_special_tokens=True)
