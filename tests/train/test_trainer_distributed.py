"""The Trainer on two processes (`cove launch --nproc-per-node 2`, DDP or FSDP2 over gloo):
the loss of each step is the global batch's, so 2 processes x batch 2 x accumulation 2 train
exactly as one process with batches of 8: token-normalised for a causal LM (padded, variable
lengths), per-example for a classifier. (transformers multiplies the classifier's loss by the
world size here; see reference-notes.) The checkpoint the run ends with holds every process's
random states and full weights that transformers loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.test_trainer import (
    QUIET,
    classification_data,
    curve,
    lm_data,
    pad_lm,
    save_tiny_bert,
    save_tiny_llama,
    transformers,
)

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from cove.models import AutoModelForCausalLM, AutoModelForSequenceClassification
    from cove.trainer import Trainer, TrainingArguments

    def pad_lm(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, f in enumerate(features):
            ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[i, : len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": ids.masked_fill(mask == 0, -100)}

    llama, bert, data_file, out = sys.argv[1:5]
    data = json.load(open(data_file))
    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2,
                  num_train_epochs=2, learning_rate=3e-3, logging_steps=1, save_steps=4,
                  seed=3, report_to="none", disable_tqdm=True, use_cpu=True)
    runs = {}
    for name, cls, folder, collator in (("lm", AutoModelForCausalLM, llama, pad_lm),
                                        ("cls", AutoModelForSequenceClassification, bert, None)):
        trainer = Trainer(cls.from_pretrained(folder), TrainingArguments(f"{out}/{name}", **common),
                          train_dataset=data[name], data_collator=collator)
        trainer.train()
        runs[name] = [[e["loss"], e["learning_rate"], e["grad_norm"]]
                      for e in trainer.state.log_history if "loss" in e]
    if trainer.is_world_process_zero():
        with open(f"{out}/curves.json", "w") as f:
            json.dump(runs, f)
''')


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_train_as_one_with_the_global_batch(tmp_path, sharding):
    from cove.models import AutoModelForCausalLM, AutoModelForSequenceClassification
    from cove.trainer import Trainer, TrainingArguments

    llama, bert = save_tiny_llama(tmp_path / "llama"), save_tiny_bert(tmp_path / "bert")
    data = {"lm": lm_data(16), "cls": classification_data(16, extra_column=False)}
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "script.py").write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "cove", "launch", "--nproc-per-node", "2",
         *(["--use-fsdp"] if sharding == "fsdp" else []), str(tmp_path / "script.py"),
         llama, bert, str(tmp_path / "data.json"),
         str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes on CPU over gloo" in proc.stderr
    launched = json.loads((tmp_path / "out" / "curves.json").read_text())

    for name, cls, folder, collator in (("lm", AutoModelForCausalLM, llama, pad_lm),
                                        ("cls", AutoModelForSequenceClassification, bert, None)):
        one = Trainer(cls.from_pretrained(folder),
                      TrainingArguments(str(tmp_path / name), per_device_train_batch_size=8,
                                        num_train_epochs=2, learning_rate=3e-3, logging_steps=1,
                                        save_strategy="no", seed=3, **QUIET),
                      train_dataset=data[name], data_collator=collator)
        one.train()
        expected = curve(one)
        assert expected.shape == (4, 3)
        np.testing.assert_allclose(launched[name], expected, rtol=0, atol=1e-5, err_msg=name)

        checkpoint = tmp_path / "out" / name / "checkpoint-4"
        assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"} <= {
            p.name for p in checkpoint.iterdir()}
        theirs = getattr(transformers, cls.__name__).from_pretrained(checkpoint).eval()
        batch = pad_lm(data["lm"][:3]) if name == "lm" else {
            "input_ids": torch.tensor([r["input_ids"] for r in data["cls"][:3]])}
        batch.pop("labels", None)
        one.model.eval()
        with torch.no_grad():
            np.testing.assert_allclose(theirs(**batch).logits, one.model(**batch).logits,
                                       atol=1e-5, err_msg=name)
