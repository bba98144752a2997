"""Tiny random causal LMs saved by transformers (Llama with grouped-query attention and a pad
token, GPT-2 without one), with a byte-level BPE tokenizer and a ChatML chat template whose
assistant turns are marked with {% generation %}; small datasets in each TRL format. The
reference `trl` (1.16) is the oracle.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import transformers

from tests.pipelines.test_text_generation import build_decoders

# ChatML with the assistant's text (and its end marker) inside {% generation %}, as
# assistant_only_loss needs
CHATML_GENERATION = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, how are you today?",
        "once upon a time there was a tiny model", "the cat sat on the mat"]
PROMPT_COMPLETION = {"prompt": ["the quick brown", "hello world,", "once upon a time",
                                "what is the capital of france?"],
                     "completion": [" fox jumps", " how are you today?", " there was a model",
                                    " paris."]}
PREFERENCE = {"prompt": ["the quick brown", "hello world,", "once upon a time", "the cat"],
              "chosen": [" fox jumps", " how are you?", " there was a tiny model", " sat"],
              "rejected": [" dog", " bye", " a cat", " on the mat, the lazy dog"]}
# preference pairs as conversations, and with the prompt implicit in chosen/rejected
CONVERSATIONAL_PREFERENCE = {
    "prompt": [[{"role": "user", "content": "what color is the sky?"}],
               [{"role": "user", "content": "hello"}]],
    "chosen": [[{"role": "assistant", "content": "it is blue."}],
               [{"role": "assistant", "content": "hi there"}]],
    "rejected": [[{"role": "assistant", "content": "green"}],
                 [{"role": "assistant", "content": "go away, you"}]],
}
IMPLICIT_PREFERENCE = {key: [p + c for p, c in zip(PREFERENCE["prompt"], PREFERENCE[key],
                                                   strict=True)]
                       for key in ("chosen", "rejected")}
MESSAGES = [
    [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi, how are you?"}],
    [{"role": "system", "content": "you are a tiny model"},
     {"role": "user", "content": "what is the capital of france?"},
     {"role": "assistant", "content": "paris."},
     {"role": "user", "content": "and the cat?"},
     {"role": "assistant", "content": "the cat sat on the mat"}],
]


@pytest.fixture(scope="session", autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="trl")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Folders "llama" and "gpt2" (model, tokenizer.json, tokenizer_config.json with the
    generation-marked ChatML template)."""
    out = build_decoders(tmp_path_factory.mktemp("trl-models"), kinds=("llama", "gpt2"))
    for folder in out.values():
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text())
        config["chat_template"] = CHATML_GENERATION
        path.write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def reward_model(tiny, tmp_path_factory) -> Path:
    """A tiny Llama sequence classifier (one logit) saved by transformers with the tiny
    tokenizer: the reward model of GRPO and PPO runs."""
    import shutil

    import torch

    folder = tmp_path_factory.mktemp("trl-reward-model")
    config = json.loads((tiny["llama"] / "config.json").read_text())
    config = transformers.LlamaConfig(**{k: v for k, v in config.items()
                                         if k not in ("architectures", "transformers_version")},
                                      num_labels=1)
    torch.manual_seed(0)
    transformers.LlamaForSequenceClassification(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny["llama"] / name, folder / name)
    return folder
