"""Wrong inputs give clear errors, for every task: empty strings, non-strings, unknown tasks,
models whose head does not fit the task, questions without a context, devices and dtypes
this machine cannot use. Each error names what is wrong (checked by its message)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import cove
from cove.models import AutoModelForMaskedLM

TEXT_TASKS = ["text-classification", "token-classification", "fill-mask", "feature-extraction",
              "sentence-similarity"]


@pytest.fixture(scope="module")
def pipes(folders, ner_folder, qa_folder) -> dict[str, cove.Pipeline]:
    return {
        "text-classification": cove.pipeline("text-classification",
                                             model=str(folders["classifier"])),
        "token-classification": cove.pipeline("token-classification", model=str(ner_folder)),
        "fill-mask": cove.pipeline("fill-mask", model=str(folders["mlm"])),
        "feature-extraction": cove.pipeline("feature-extraction", model=str(folders["base"])),
        "sentence-similarity": cove.pipeline("sentence-similarity", model=str(folders["base"]),
                                             pooling="mean"),
        "question-answering": cove.pipeline("question-answering", model=str(qa_folder)),
    }


@pytest.mark.parametrize("task", TEXT_TASKS)
@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_strings(pipes, task, text):
    with pytest.raises(ValueError, match=f"^{task} pipeline got an empty string"):
        pipes[task](text)
    with pytest.raises(ValueError, match="empty string"):  # inside a list too
        pipes[task](["the [MASK] sat on the mat", text])


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_non_strings(pipes, task):
    p = pipes[task]
    for value, name in [(3, "int"), (None, "NoneType"), (2.5, "float")]:
        with pytest.raises(ValueError, match=f"expects a string, a list or an iterable, got "
                                             f"{name}"):
            p(value)
        with pytest.raises(ValueError, match=f"expects strings, got {name}"):
            p(["the [MASK] sat on the mat", value])
    with pytest.raises(ValueError, match="got bytes: decode them"):
        p(b"the cat")


def test_unknown_and_unsupported_tasks(folders):
    model = str(folders["classifier"])
    with pytest.raises(ValueError, match="Unknown task 'sentiment'. Available tasks: .*"
                                         "sentiment-analysis"):
        cove.pipeline("sentiment", model=model)
    with pytest.raises(ValueError, match="task must be a string, got int"):
        cove.pipeline(3, model=model)
    with pytest.raises(ValueError, match="has no seq2seq-lm head: it cannot run the "
                                         "'summarization' task"):
        cove.pipeline("summarization", model=model)
    with pytest.raises(ValueError, match="model must be a Hub repository id, a folder or a "
                                         "Cove model, got int"):
        cove.pipeline("fill-mask", model=3)
    with pytest.raises(OSError, match="neither a folder nor a Hub repository id"):
        cove.pipeline("fill-mask", model="./no/such/folder")


@pytest.mark.parametrize(("task", "model", "head"), [
    ("text-classification", "mlm", "sequence-classification"),
    ("token-classification", "classifier", "token-classification"),
    ("question-answering", "base", "question-answering"),
    ("fill-mask", "classifier", "masked-lm"),
    ("text-generation", "mlm", "causal-lm"),
])
def test_model_head_does_not_fit_the_task(folders, task, model, head):
    with pytest.raises(ValueError, match=f"has no {head} head: it cannot run the '{task}' task"):
        cove.pipeline(task, model=str(folders[model]))


def test_model_without_trained_head(folders, tmp_path):
    """A base checkpoint whose config does not name its architecture: the head's weights are
    missing, and loading it as a classifier would give random answers."""
    folder = tmp_path / "headless"
    shutil.copytree(folders["base"], folder)
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has no trained sequence-classification head .*"
                                         "missing weights: classifier"):
        cove.pipeline("text-classification", model=str(folder))
    loaded = AutoModelForMaskedLM.from_pretrained(str(folders["mlm"]))
    with pytest.raises(ValueError, match="A BertForMaskedLM cannot run the 'question-answering' "
                                         "task: it needs a model with a question-answering head"):
        cove.pipeline("question-answering", model=loaded, tokenizer=str(folders["mlm"]))


def test_question_without_context(pipes):
    qa = pipes["question-answering"]
    with pytest.raises(ValueError, match="needs both a question and a context"):
        qa(question="what sat on the mat?")
    with pytest.raises(ValueError, match="the context is missing"):
        qa({"question": "what sat on the mat?"})
    with pytest.raises(ValueError, match='expects {"question": ..., "context": ...} dicts, '
                                         "got str"):
        qa("what sat on the mat?")
    with pytest.raises(ValueError, match="the context is an empty string"):
        qa(question="what sat on the mat?", context=" ")
    with pytest.raises(ValueError, match="the question is an empty string"):
        qa(question="", context="the cat sat on the mat")
    with pytest.raises(ValueError, match="the context must be a string, got int"):
        qa(question="what?", context=3)


def test_unknown_arguments(pipes):
    with pytest.raises(TypeError, match="unexpected arguments: topk"):
        pipes["fill-mask"]("the [MASK] sat", topk=2)
    with pytest.raises(TypeError, match="unexpected arguments: pooling"):
        pipes["feature-extraction"]("the cat", pooling="mean")
    with pytest.raises(TypeError, match=r"unexpected arguments: top_n \(it accepts top_k, "):
        pipes["question-answering"](question="what?", context="the cat", top_n=2)


def test_devices_and_dtypes(folders):
    model = str(folders["mlm"])
    with pytest.raises(ValueError, match="Invalid device 'gpu0': use 'cpu', 'cuda'"):
        cove.pipeline("fill-mask", model=model, device="gpu0")
    with pytest.raises(ValueError, match="Invalid device True: use 'cpu'"):
        cove.pipeline("fill-mask", model=model, device=True)
    with pytest.raises(ValueError, match="Unsupported dtype 'float8': use float32, bfloat16"):
        cove.pipeline("fill-mask", model=model, dtype="float8")
    with pytest.raises(ValueError, match="Unsupported dtype torch.int8"):
        cove.pipeline("fill-mask", model=model, dtype=torch.int8)
    with pytest.raises(ValueError, match="Pass device= or device_map=, not both"):
        cove.pipeline("fill-mask", model=model, device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="device_map must be 'auto', a device or a dict"):
        cove.pipeline("fill-mask", model=model, device_map="everywhere")
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:1", 0, torch.device("cuda")):
            with pytest.raises(ValueError, match="asked for, but this machine has no CUDA GPU"):
                cove.pipeline("fill-mask", model=model, device=device)


def test_devices_and_dtypes_that_work(folders):
    model = str(folders["mlm"])
    for dtype, want in [("float16", torch.float16), ("torch.bfloat16", torch.bfloat16),
                        (torch.float32, torch.float32), ("auto", torch.float32)]:
        assert cove.pipeline("fill-mask", model=model, dtype=dtype).model.dtype == want
    for device in ("cpu", -1, torch.device("cpu")):
        assert cove.pipeline("fill-mask", model=model, device=device).device.type == "cpu"
    p = cove.pipeline("fill-mask", model=model, device_map="auto")
    if not torch.cuda.is_available():
        assert set(p.model.hf_device_map.values()) == {"cpu"}
    assert len(p("the cat sat on the [MASK]")) == 5


@pytest.mark.parametrize("task", [*TEXT_TASKS, "question-answering"])
def test_batch_size_must_be_a_positive_int(pipes, folders, task):
    """A batch size below 1 used to give [None, None] (or a TypeError from inside), silently
    wrong; it is refused, at construction and per call."""
    p = pipes[task]
    inputs = ([{"question": "what sat?", "context": "the cat sat on the mat"}] * 2
              if task == "question-answering" else ["the [MASK] sat", "a [MASK] cat"])
    for bad in (-2, 0, "2", 2.0, True):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got "
                                             f"{bad!r}"):
            p(inputs, batch_size=bad)
    assert len(p(inputs, batch_size=2)) == 2
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -1"):
        cove.pipeline("text-classification", model=str(folders["classifier"]), batch_size=-1)
