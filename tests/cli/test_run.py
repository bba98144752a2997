"""`cove run TASK [INPUT ...]` as a subprocess: one JSON line per input, errors on one line.

Tiny random BERT folders (tests/pipelines/conftest.py's builders); the expected lines are
cove.pipeline's results in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cove
from tests.pipelines.conftest import QA_CONTEXT, TEXTS, build

REPO = Path(__file__).resolve().parents[2]


def cove_run(*args, input: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "cove", "run", *map(str, args)],
                            input=input or "", capture_output=True, text=True, env=env,
                            timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def lines(result: subprocess.CompletedProcess) -> list:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def error(result: subprocess.CompletedProcess, printed: int = 0) -> str:
    """The one-line error; `printed`: lines of results streamed out before it."""
    assert result.returncode == 1 and len(result.stdout.splitlines()) == printed
    assert result.stderr.startswith("cove: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def close(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert abs(a[key] - b[key]) < 1e-5
            else:
                assert a[key] == b[key]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import transformers

    from tests.pipelines.conftest import TINY, VOCAB, randomize, write_tokenizer

    out = build(tmp_path_factory.mktemp("run"))
    config = transformers.BertConfig(vocab_size=len(dict.fromkeys(VOCAB)), **TINY)
    qa = out["classifier"].parent / "qa"
    randomize(transformers.BertForQuestionAnswering(config), seed=21).save_pretrained(qa)
    write_tokenizer(qa)
    out["qa"] = qa
    return out


def test_inputs_from_arguments_file_and_stdin(models, tmp_path):
    model = models["classifier"]
    want = cove.pipeline("text-classification", model=str(model))(TEXTS)
    close(lines(cove_run("sentiment-analysis", *TEXTS, "--model", model)), want)
    file = tmp_path / "inputs.txt"
    file.write_text("\n".join(TEXTS[:4]) + "\n\n" + "\n".join(TEXTS[4:]) + "\n")  # a blank line
    close(lines(cove_run("text-classification", "--file", file, "--model", model,
                         "--batch-size", 3)), want)
    stdin = "\r\n".join(TEXTS) + "\r\n"
    close(lines(cove_run("text-classification", "--model", model, "--dtype", "float32",
                         "--device", "cpu", input=stdin)), want)


def test_json_inputs_for_question_answering(models):
    qa = cove.pipeline("question-answering", model=str(models["qa"]))
    questions = ["what sat on the mat?", "who was terrible?", "what did the fox do?"]
    want = [qa(question=q, context=QA_CONTEXT) for q in questions]
    stdin = "".join(json.dumps({"question": q, "context": QA_CONTEXT}) + "\n" for q in questions)
    got = lines(cove_run("question-answering", "--model", models["qa"], "--batch-size", 2,
                         input=stdin))
    close(got, want)


def test_fill_mask_and_embeddings(models):
    got = lines(cove_run("fill-mask", "the cat sat on the [MASK]", "--model", models["mlm"]))
    want = cove.pipeline("fill-mask", model=str(models["mlm"]))("the cat sat on the [MASK]")
    assert len(got) == 1
    close(got[0], want)
    got = lines(cove_run("feature-extraction", "hello world", "--model", models["base"]))
    want = cove.pipeline("feature-extraction", model=str(models["base"]))("hello world")
    assert torch.allclose(torch.tensor(got[0]), torch.tensor(want), atol=1e-5)
    # return_tensors=true: tensors are written as JSON lists (they were a TypeError traceback)
    got = lines(cove_run("feature-extraction", "hello world", "--model", models["base"],
                         "--arg", "return_tensors=true"))
    assert torch.allclose(torch.tensor(got[0]), torch.tensor(want), atol=1e-5)
    got = lines(cove_run("sentence-similarity", "hello world", "--model", models["base"],
                         "--arg", "pooling=mean", "--arg", "return_tensors=true"))
    want = cove.pipeline("sentence-similarity", model=str(models["base"]),
                         pooling="mean")("hello world")
    assert torch.allclose(torch.tensor(got[0]), torch.tensor(want), atol=1e-5)


def test_task_arguments(models):
    model = models["classifier"]
    want = cove.pipeline("text-classification", model=str(model))(TEXTS[:2], top_k=2)
    close([r for line in lines(cove_run("text-classification", *TEXTS[:2], "--model", model,
                                        "--arg", "top_k=2")) for r in line],
          [r for result in want for r in result])
    want = cove.pipeline("text-classification", model=str(model),
                         function_to_apply="none")(TEXTS[0])
    close(lines(cove_run("text-classification", TEXTS[0], "--model", model,
                         "--arg", "function_to_apply=none")), want)
    assert "expected KEY=VALUE" in error(cove_run("text-classification", "hi", "--model", model,
                                                  "--arg", "top_k"))
    assert "unexpected arguments: topk" in error(
        cove_run("text-classification", "hi", "--model", model, "--arg", "topk=2"))


def test_errors(models, tmp_path):
    model = models["classifier"]
    assert "Unknown task 'text-clasification'" in error(
        cove_run("text-clasification", "hi", "--model", model))
    assert "empty string" in error(cove_run("text-classification", "", "--model", model))
    assert "stdin: line 2 starts with '{' but is not a JSON object" in error(
        cove_run("question-answering", "--model", models["qa"],
                 input='{"question": "a?", "context": "b"}\n{"question": "x"\n'), printed=1)
    assert "context" in error(cove_run("question-answering", '{"question": "what?"}',
                                       "--model", models["qa"]))
    assert "no such file" in error(cove_run("text-classification", "--file",
                                            tmp_path / "missing.txt", "--model", model))
    assert "not both" in error(cove_run("text-classification", "hi", "--file", __file__,
                                        "--model", model))
    assert "--batch-size must be at least 1" in error(
        cove_run("text-classification", "hi", "--batch-size", 0, "--model", model))
    assert "Unsupported dtype 'float8'" in error(
        cove_run("text-classification", "hi", "--dtype", "float8", "--model", model))
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in error(
            cove_run("text-classification", "hi", "--device", "cuda", "--model", model))
