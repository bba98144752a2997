"""`cove chat` as a subprocess: user turns on stdin, replies streamed on stdout.

A tiny random Llama saved by transformers, with a word-level tokenizer built from a fixed
vocabulary (so every reply is words on one line) and a ChatML chat template; then the real
SmolLM2-135M-Instruct GGUF answering the France question. Ctrl-C is SIGINT sent to the process
while it streams an endless reply (the same model, its special tokens suppressed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
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


def test_smollm2_gguf_answers_paris():
    need_data()
    result = run_chat(SMOLLM2, "--max-new-tokens", 24, input="What is the capital of France?\n",
                      timeout=600)
    lines = ok(result)
    assert "Paris" in result.stdout, result.stdout
    assert lines[0].startswith("The capital of France is Paris"), lines


# -- Ctrl-C ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def endless_chat(tiny_chat, tmp_path_factory) -> Path:
    """tiny_chat whose replies never end (no special token can be generated) and may be long."""
    folder = tmp_path_factory.mktemp("endless-chat") / "model"
    shutil.copytree(tiny_chat, folder)
    for name, changes in (("config.json", {"max_position_embeddings": 8192}),
                          ("generation_config.json", {"suppress_tokens": list(range(len(SPECIAL)))})):
        path = folder / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return folder


class Output:
    """A process's stdout, read by a thread as it comes."""

    def __init__(self, stream) -> None:
        self.text = ""
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            with self._changed:
                self.text += chunk.decode()
                self._changed.notify_all()

    def wait(self, done, timeout: float = 120) -> str:
        """Wait until done(text) holds; the text."""
        with self._changed:
            assert self._changed.wait_for(lambda: done(self.text), timeout), self.text
            return self.text


def start_chat(*args) -> tuple[subprocess.Popen, Output]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # Ctrl-C reaches the chat as from a terminal, even when the suite itself runs as a
    # background job (which starts with SIGINT ignored, inherited by its children).
    proc = subprocess.Popen([sys.executable, "-m", "cove", "chat", *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, Output(proc.stdout)


def say(proc: subprocess.Popen, text: str) -> None:
    proc.stdin.write(text.encode() + b"\n")
    proc.stdin.flush()


def words_after(lines: int, count: int):
    """A condition on stdout: `count` words past its first `lines` lines."""
    return lambda text: text.count("\n") >= lines and \
        len(text.split("\n", lines)[-1].split()) >= count


def greedy_reply(folder: Path, history: list[dict], new: int) -> list[str]:
    from cove.models import AutoModelForCausalLM
    from cove.tokenizers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(history, add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=new, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split()


def test_ctrl_c_stops_the_reply_and_keeps_the_conversation(endless_chat):
    proc, out = start_chat(endless_chat, "--max-new-tokens", 4000)
    try:
        say(proc, "hello")
        out.wait(words_after(0, 3))  # the reply is streaming
        proc.send_signal(signal.SIGINT)
        first = out.wait(lambda text: text.count("\n") >= 1).split("\n")[0].split()
        say(proc, "what is the capital of france")  # back at the prompt
        out.wait(words_after(1, 3))
        proc.send_signal(signal.SIGINT)
        second = out.wait(lambda text: text.count("\n") >= 2).split("\n")[1].split()
        time.sleep(0.5)  # (the process is back at the prompt, waiting on stdin)
        proc.send_signal(signal.SIGINT)  # Ctrl-C at the prompt ends the chat
        assert proc.wait(60) == 130
    finally:
        proc.kill()
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert 3 <= len(first) < 4000 and 3 <= len(second) < 4000
    # The stopped reply stayed in the conversation, as shown: the second reply is the one to
    # the whole exchange (and not the one without it).
    question = {"role": "user", "content": "what is the capital of france"}
    history = [{"role": "user", "content": "hello"},
               {"role": "assistant", "content": " ".join(first)}, question]
    assert second == greedy_reply(endless_chat, history, len(second))
    assert second != greedy_reply(endless_chat, [question], len(second))


def test_two_quick_ctrl_c_end_the_chat(endless_chat):
    proc, out = start_chat(endless_chat, "--max-new-tokens", 4000)
    try:
        say(proc, "hello")
        out.wait(words_after(0, 3))
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)  # (two signals at once would be delivered as one)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr.read().decode()
    assert out.wait(lambda text: text.endswith("\n"), 10)  # the reply's line was ended


def test_the_second_ctrl_c_during_a_reply_interrupts():
    """In process: the first SIGINT only marks the reply stopped (generate then ends it at the
    next token); a second one raises KeyboardInterrupt; outside, the handler is as it was."""
    import torch

    from cove.cli import _StopOnCtrlC

    stop = _StopOnCtrlC()
    # as in a terminal, even when the suite runs as a background job (SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        ids = torch.zeros(2, 3, dtype=torch.long)
        with pytest.raises(KeyboardInterrupt), stop.armed():
            assert not stop(ids, None).any()
            signal.raise_signal(signal.SIGINT)
            assert stop.pressed and stop(ids, None).all()
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with stop.armed():
            assert not stop.pressed  # each reply starts afresh
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with stop.armed():  # a background job (SIGINT ignored) keeps ignoring Ctrl-C
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def served_chat(tiny_chat, tmp_path_factory):
    """`cove serve-model` serving the tiny chat model as `tiny`; its URL."""
    from tests.server.live import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    data = tmp_path_factory.mktemp("serve-model")
    log = open(data / "log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cove", "serve-model", str(tiny_chat),
                             "--alias", "tiny", "--port", str(port), "--data", str(data),
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (data / "log").read_text()
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "serve-model did not start"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(30)


def test_chat_with_a_server(tiny_chat, served_chat):
    """--url: the same conversation, greedy, gives the same replies as the model run here."""
    turns = "hello\nhello\n/reset\nhello\n"
    local = ok(run_chat(tiny_chat, "--max-new-tokens", 5, input=turns))
    remote = ok(run_chat("tiny", "--url", served_chat, "--max-new-tokens", 5, input=turns))
    assert remote == local and len(remote) == 3
    result = run_chat("nobody/nothing", "--url", served_chat, input="hello\n", timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("cove: http://127.0.0.1") and \
        "Repository not found: nobody/nothing" in result.stderr
