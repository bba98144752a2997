"""A training process killed (SIGKILL) in the middle of writing a checkpoint resumes from the
latest complete one, and the rest of its loss curve equals an uninterrupted run's: shuffled
data over several epochs, gradient accumulation, dropout on (so random states matter)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

# The run, shared by the killed subprocess and this test (exec'd here): one source for both.
RUN = textwrap.dedent('''
    import torch

    from cove.models import BertConfig, BertForSequenceClassification
    from cove.trainer import Trainer, TrainingArguments


    def save_model(folder):
        config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.1,
                            attention_probs_dropout_prob=0.1)
        torch.manual_seed(0)
        BertForSequenceClassification(config).save_pretrained(folder)


    def build(model_folder, output_dir, callbacks=()):
        g = torch.Generator().manual_seed(1)
        data = []
        for _ in range(24):
            ids = torch.randint(5, 64, (10,), generator=g)
            data.append({"input_ids": ids.tolist(), "labels": int(ids[0]) % 3})
        args = TrainingArguments(output_dir, per_device_train_batch_size=2,
                                 gradient_accumulation_steps=2, num_train_epochs=3,
                                 learning_rate=3e-3, warmup_steps=3, weight_decay=0.01,
                                 logging_steps=1, save_steps=4, seed=5, data_seed=17,
                                 report_to="none", disable_tqdm=True, use_cpu=True)
        model = BertForSequenceClassification.from_pretrained(model_folder)
        return Trainer(model, args, train_dataset=data, callbacks=list(callbacks))
''')

KILLED = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, os.getcwd())
    from cove.trainer import checkpoints

    exec(open(sys.argv[1]).read())
    save_rng = checkpoints.save_rng_state

    def save_then_die(path):
        # killed in the middle of the step-12 save: model and optimizer are written, the rest
        # is not
        if "checkpoint-12" in path:
            os.kill(os.getpid(), signal.SIGKILL)
        save_rng(path)

    checkpoints.save_rng_state = save_then_die
    build(sys.argv[2], sys.argv[3]).train()
''')


def losses(trainer, after: int) -> np.ndarray:
    return np.array([[e["loss"], e["learning_rate"], e["grad_norm"]]
                     for e in trainer.state.log_history if "loss" in e and e["step"] > after])


def test_killed_while_saving_resumes_exactly(tmp_path):
    namespace: dict = {}
    exec(RUN, namespace)
    model = str(tmp_path / "model")
    namespace["save_model"](model)
    (tmp_path / "run.py").write_text(RUN)
    (tmp_path / "killed.py").write_text(KILLED)

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(tmp_path / "killed.py"), str(tmp_path / "run.py"),
                           model, str(out)], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert "checkpoint-4" in names and "checkpoint-8" in names and "checkpoint-12" not in names
    assert [n for n in names if n.startswith(".checkpoint-12.tmp-")]  # the half-written save

    uninterrupted = namespace["build"](model, str(tmp_path / "whole"))
    uninterrupted.train()
    expected = losses(uninterrupted, after=0)
    assert len(expected) == 18  # 12 micro-batches = 6 updates per epoch, 3 epochs

    resumed = namespace["build"](model, str(out))
    resumed.train(resume_from_checkpoint=True)  # the latest complete checkpoint: step 8
    np.testing.assert_allclose(losses(resumed, after=8), expected[8:], rtol=0, atol=1e-6)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")]  # the partial save was swept away
    assert "checkpoint-12" in names and "checkpoint-18" in names
    jsonl = (out / "log_history.jsonl").read_text().splitlines()
    assert len(jsonl) == len(resumed.state.log_history)  # no steps of the killed run twice
