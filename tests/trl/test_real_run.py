"""A real run on CPU: SFT then DPO with LoRA on SmolLM2-135M (the packaged GGUF, converted by
Cove), the DPO adapter pushed to a live Cove server and loaded back by the real `peft` on
transformers, which computes the same logits as Cove.

SFT teaches short answers to 16 questions (a conversational prompt-completion set); its adapter
is merged and the merged model saved. DPO then trains a new adapter on that model with
preference pairs (the right answer over a wrong one); its reference is the SFT model itself (the
adapter disabled), so no second copy is held.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cove.datasets import Dataset
from cove.models import AutoModelForCausalLM
from cove.peft import LoraConfig, PeftModel
from cove.tokenizers import AutoTokenizer
from cove.trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
from tests.models.test_gguf import smollm2_float32
from tests.peft.test_qlora import PAIRS
from tests.server.conftest import seeded_server

pytestmark = pytest.mark.slow
REPO = "alice/smollm2-135m-dpo-lora"
PEFT_LOADER = textwrap.dedent("""
    import json, sys
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, repo, inputs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), repo).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(inputs)).logits
    print(json.dumps(out[:, -4:].tolist()))
""")


def _common(out) -> dict:
    return dict(output_dir=str(out), per_device_train_batch_size=4, lr_scheduler_type="constant",
                logging_steps=1, bf16=False, gradient_checkpointing=False, report_to=[],
                save_strategy="no", max_length=64, seed=0, disable_tqdm=True)


def _lora() -> LoraConfig:
    return LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def _logged(trainer, key: str) -> list[float]:
    return [float(log[key]) for log in trainer.state.log_history if key in log]


@pytest.fixture(scope="module")
def smollm2():
    return smollm2_float32()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = seeded_server(tmp_path_factory.mktemp("trl-hub"))
    yield live
    live.stop()


def test_sft_then_dpo_with_lora_pushed_and_loaded_by_peft(smollm2, server, tmp_path):
    torch.manual_seed(0)
    user = [[{"role": "user", "content": q}] for q, _ in PAIRS]
    sft = SFTTrainer(
        model=str(smollm2), train_dataset=Dataset.from_dict({
            "prompt": user,
            "completion": [[{"role": "assistant", "content": a}] for _, a in PAIRS]}),
        args=SFTConfig(**_common(tmp_path / "sft"), max_steps=12, learning_rate=2e-3),
        peft_config=_lora())
    sft.train()
    losses = _logged(sft, "loss")
    assert len(losses) == 12 and sum(losses[-4:]) < 0.6 * sum(losses[:4]), losses
    merged = sft.model.merge_and_unload()
    merged.save_pretrained(tmp_path / "sft-merged")
    sft.processing_class.save_pretrained(tmp_path / "sft-merged")

    wrong = [a for _, a in PAIRS[1:] + PAIRS[:1]]  # another question's answer
    dpo = DPOTrainer(
        model=str(tmp_path / "sft-merged"), train_dataset=Dataset.from_dict({
            "prompt": user,
            "chosen": [[{"role": "assistant", "content": a}] for _, a in PAIRS],
            "rejected": [[{"role": "assistant", "content": w}] for w in wrong]}),
        args=DPOConfig(**_common(tmp_path / "dpo"), max_steps=12, learning_rate=2e-3,
                       beta=0.1),
        peft_config=_lora())
    dpo.train()
    losses, accuracies = _logged(dpo, "loss"), _logged(dpo, "rewards/accuracies")
    assert abs(losses[0] - 0.6931) < 1e-3  # the adapter starts as a no-op: policy == reference
    assert sum(losses[-4:]) / 4 < 0.5 and sum(accuracies[-4:]) / 4 >= 0.75, (losses, accuracies)

    model = dpo.model.eval()
    assert isinstance(model, PeftModel)
    model.push_to_hub(REPO, token=server.accounts.alice_write, endpoint=server.url)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "sft-merged")
    inputs = tokenizer.apply_chat_template([user[0]], add_generation_prompt=True,
                                           return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=inputs).logits[:, -4:]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COVE_"))}
    env.update(HF_ENDPOINT=server.url, HF_TOKEN=server.accounts.alice_write,
               HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, "-c", PEFT_LOADER, str(tmp_path / "sft-merged"), REPO,
                           json.dumps(inputs.tolist())], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)
    # and back into Cove from the server
    again = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tmp_path / "sft-merged"), REPO,
        token=server.accounts.alice_write, endpoint=server.url, cache_dir=tmp_path / "cache")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(input_ids=inputs).logits[:, -4:], ours)
