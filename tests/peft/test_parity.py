"""Adapters both ways: made by peft (random weights) and loaded by Cove, made by Cove and loaded
by peft; the same outputs, and the same file keys and adapter_config.json as peft writes."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

import cove.peft
import peft
from tests.peft.conftest import assert_close, load, logits, randomize_adapter

LIST = ["q_proj", "v_proj"]
CASES = {
    "lora-list": ("llama", "LoraConfig", dict(task_type="CAUSAL_LM", r=4, lora_alpha=16,
                                              target_modules=LIST)),
    "lora-regex": ("llama", "LoraConfig", dict(target_modules=r".*layers\.1\.mlp\.(up|down)_proj",
                                               r=2)),
    "lora-all-linear": ("llama", "LoraConfig", dict(task_type="CAUSAL_LM",
                                                    target_modules="all-linear")),
    "lora-rslora-patterns": ("llama", "LoraConfig", dict(
        task_type="CAUSAL_LM", r=8, lora_alpha=12, use_rslora=True,
        target_modules=["q_proj", "k_proj", "o_proj"], rank_pattern={"k_proj": 2},
        alpha_pattern={"layers.0.self_attn.q_proj": 3})),
    "lora-pissa": ("llama", "LoraConfig", dict(target_modules=["q_proj", "up_proj"], r=4,
                                               init_lora_weights="pissa")),
    "lora-layers": ("llama", "LoraConfig", dict(target_modules=["gate_proj", "v_proj"],
                                                layers_to_transform=[1])),
    "lora-dora": ("llama", "LoraConfig", dict(task_type="CAUSAL_LM", use_dora=True,
                                              target_modules=["q_proj", "down_proj"])),
    "lora-embedding-modules-to-save": ("llama", "LoraConfig", dict(
        task_type="CAUSAL_LM", target_modules=["embed_tokens", "k_proj"],
        modules_to_save=["lm_head"])),
    "lora-gpt2-conv1d": ("gpt2", "LoraConfig", dict(task_type="CAUSAL_LM", r=4,
                                                   target_modules=["c_attn", "c_fc", "wte"])),
    "lora-gpt2-dora": ("gpt2", "LoraConfig", dict(task_type="CAUSAL_LM", use_dora=True,
                                                 target_modules=["c_proj"])),
    "lora-bert": ("bert", "LoraConfig", dict(task_type="SEQ_CLS", target_modules="all-linear",
                                             bias="all")),
    "ia3-llama": ("llama", "IA3Config", dict(task_type="CAUSAL_LM")),
    "ia3-gpt2": ("gpt2", "IA3Config", dict(task_type="CAUSAL_LM")),
    "ia3-bert": ("bert", "IA3Config", dict(task_type="SEQ_CLS")),
    "prompt-tuning": ("llama", "PromptTuningConfig", dict(task_type="CAUSAL_LM",
                                                         num_virtual_tokens=4)),
    "prompt-tuning-bert": ("bert", "PromptTuningConfig", dict(task_type="SEQ_CLS",
                                                             num_virtual_tokens=3)),
    "prefix-gqa": ("llama", "PrefixTuningConfig", dict(task_type="CAUSAL_LM",
                                                      num_virtual_tokens=5)),
    "prefix-projection-gpt2": ("gpt2", "PrefixTuningConfig", dict(
        task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True,
        encoder_hidden_size=16)),
    "p-tuning": ("llama", "PromptEncoderConfig", dict(task_type="CAUSAL_LM",
                                                     num_virtual_tokens=4,
                                                     encoder_hidden_size=24)),
    "p-tuning-lstm-gpt2": ("gpt2", "PromptEncoderConfig", dict(
        task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=8,
        encoder_reparameterization_type="LSTM")),
}


def normalised(config: dict) -> dict:
    """Sets written as lists in any order compare as sets; the writer's version is not
    compared."""
    out = dict(config)
    out.pop("peft_version")
    for key in ("target_modules", "modules_to_save", "feedforward_modules"):
        if isinstance(out.get(key), list):
            out[key] = sorted(set(out[key]))
    return out


@pytest.mark.parametrize("case", CASES)
def test_adapters_load_both_ways_with_the_same_outputs_and_files(case, folders, tmp_path):
    kind, config_name, options = CASES[case]
    # peft -> Cove
    reference = peft.get_peft_model(load(folders, kind, "ref"),
                                    getattr(peft, config_name)(**options))
    randomize_adapter(reference, seed=1)
    reference.save_pretrained(tmp_path / "peft")
    ours = cove.peft.PeftModel.from_pretrained(load(folders, kind, "cove"), tmp_path / "peft")
    assert type(ours).__name__ == type(reference).__name__
    adapter = ("lora_", "ia3_", "prompt_encoder", "modules_to_save")  # (biases: as peft)
    assert not any(p.requires_grad for n, p in ours.named_parameters()
                   if any(part in n for part in adapter))
    assert_close(logits(ours, kind), logits(reference.eval(), kind))

    # Cove -> peft
    made = cove.peft.get_peft_model(load(folders, kind, "cove"),
                                    getattr(cove.peft, config_name)(**options))
    randomize_adapter(made, seed=2)
    made.save_pretrained(tmp_path / "cove")
    loaded = peft.PeftModel.from_pretrained(load(folders, kind, "ref"), tmp_path / "cove")
    assert_close(logits(made.eval(), kind), logits(loaded, kind))

    # the same files
    theirs = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    mine = load_file(tmp_path / "cove" / "adapter_model.safetensors")
    assert sorted(mine) == sorted(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    config = {side: json.loads((tmp_path / side / "adapter_config.json").read_text())
              for side in ("peft", "cove")}
    assert sorted(config["cove"]) == sorted(config["peft"])
    assert normalised(config["cove"]) == normalised(config["peft"])
