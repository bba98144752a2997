"""`cove chat` as a subprocess: user turns on stdin, replies streamed on stdout.

A tiny random Llama saved by transformers, with a word-level tokenizer built from a fixed
vocabulary (so every reply is words on one line) and a ChatML chat template; then the real
SmolLM2-135M-Instruct GGUF answering the France question.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.models.test_gguf import SMOLLM2, need_data

REPO = Path(__file__).resolve().parents[2]
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
          "{{ message['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
WORDS = ("system user assistant hello hi how are you today what is the capital of france "
         "paris a an and or but it was sea blue green red one two three good bad yes no "
         "please thanks tell me more about this that cat dog sun moon").split()


def run_chat(*args, input: str, timeout: int = 300, **env_vars: str
             ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env_vars}
    result = subprocess.run([sys.executable, "-m", "cove", "chat", *map(str, args)],
                            input=input, capture_output=True, text=True, env=env,
                            timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ok(result: subprocess.CompletedProcess) -> list[str]:
    """The reply lines (stdout is only the replies when stdin is not a terminal)."""
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-chat")
    vocab = {token: i for i, token in enumerate([*SPECIAL, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(SPECIAL)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<pad>",
        "unk_token": "<unk>"}))
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        initializer_range=0.2,  # large enough weights that earlier turns change a reply
        bos_token_id=None, eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<pad>"])
    transformers.set_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_two_turns_from_a_pipe(tiny_chat):
    lines = ok(run_chat(tiny_chat, "--max-new-tokens", 5, "--seed", 1,
                        input="hi\nwhat is the capital of france\n"))
    assert len(lines) == 2, lines  # one reply per turn
    for line in lines:
        assert line.split() and set(line.split()) <= set(WORDS), line  # the model's words, specials skipped
        assert len(line.split()) <= 5


def test_greedy_is_deterministic_and_reset_clears_the_history(tiny_chat):
    first = ok(run_chat(tiny_chat, "--max-new-tokens", 5, input="hello\nhello\n/reset\nhello\n"))
    again = ok(run_chat(tiny_chat, "--max-new-tokens", 5, input="hello\nhello\n/reset\nhello\n"))
    assert first == again and len(first) == 3
    assert first[1] != first[0]  # the second turn sees the first one
    assert first[2] == first[0]  # after /reset the same question gets the first answer
    # /exit ends the conversation; blank lines are not turns.
    assert ok(run_chat(tiny_chat, "--max-new-tokens", 5, input="\nhello\n/exit\nhi\n")) == \
        first[:1]


def test_sampling_with_a_seed_is_reproducible(tiny_chat):
    args = (tiny_chat, "--max-new-tokens", 5, "--temperature", 1.5, "--top-p", 1.0)
    a = ok(run_chat(*args, "--seed", 3, "--system", "you are a dog", input="hi\nhi\n"))
    b = ok(run_chat(*args, "--seed", 3, "--system", "you are a dog", input="hi\nhi\n"))
    assert a == b and len(a) == 2


def test_bad_model_path(tmp_path):
    for model in (tmp_path / "missing", tmp_path):  # nothing there; a folder with no model
        result = run_chat(model, input="hello\n", timeout=60)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cove: "), result.stderr
        assert result.stdout == ""


def test_smollm2_gguf_answers_paris(tmp_path):
    need_data()
    result = run_chat(SMOLLM2, "--max-new-tokens", 24, input="What is the capital of France?\n",
                      timeout=600, COVE_GGUF_CACHE=str(tmp_path / "gguf"))
    lines = ok(result)
    assert "Paris" in result.stdout, result.stdout
    assert lines[0].startswith("The capital of France is Paris"), lines
