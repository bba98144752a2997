"""text2text-generation, summarization and translation against transformers 4.57 (5.x dropped
them): tiny random T5, BART and Marian models saved by transformers 5 (seq2seq_models.py), the
same calls in both libraries, the same texts, token ids and output shapes.

4.57 runs in `.venv-tf4` (see test_qa_oracle.py) through tf4_text2text_driver.py, once for all
the calls below.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import cove
from cove.pipelines import SUPPORTED_TASKS
from tests.pipelines.seq2seq_models import build
from tests.pipelines.test_qa_oracle import VENV_PYTHON, require_venv

DRIVER = Path(__file__).with_name("tf4_text2text_driver.py")
TEXTS = ["the cat sat on the mat", "hello world", "the quick brown fox jumps over the lazy dog",
         "der hund ist müde", "le chat"]
SHORT = {"max_new_tokens": 6}

# (task, model, construction kwargs) -> calls: {"args": [...], "kwargs": {...}, "generator"}
RUNS: list[tuple[str, str, dict, list[dict]]] = []


def run(task: str, model: str, init: dict | None = None, full: bool = False,
        calls: tuple[dict, ...] = ()) -> None:
    """A run's calls: one text and a batched list, and with `full` the other input kinds and
    output shapes too."""
    base = [{"args": [TEXTS[0]], "kwargs": SHORT},
            {"args": [TEXTS], "kwargs": {**SHORT, "batch_size": 3}}]
    if full:
        base += [
            {"args": [TEXTS], "kwargs": SHORT},
            {"args": [TEXTS[:3]], "kwargs": {**SHORT, "batch_size": 2}, "generator": True},
            {"args": [TEXTS[1:3]], "kwargs": {**SHORT, "num_beams": 1}},
            {"args": [TEXTS[:2]], "kwargs": {**SHORT, "num_beams": 3, "num_return_sequences": 2}},
            {"args": [TEXTS[2]], "kwargs": {**SHORT, "return_tensors": True}},
        ]
    RUNS.append((task, model, init or {}, [*base, *calls]))


run("text2text-generation", "t5", full=True, calls=(
    {"args": [TEXTS[2]], "kwargs": {"max_new_tokens": 8, "no_repeat_ngram_size": 2,
                                    "min_length": 7, "clean_up_tokenization_spaces": True}},
    {"args": [TEXTS], "kwargs": {**SHORT, "stop_sequence": "la", "batch_size": 2}}))
run("summarization", "t5")  # "summarize: ", num_beams 2, min_length 3, no_repeat_ngram_size 2
run("translation_en_to_de", "t5")  # "translate English to German: ", num_beams 3
run("translation", "t5")  # the first translation_* parameters: en_to_de
run("translation_en_to_fr", "t5", {"max_new_tokens": 5, "num_beams": 2})
# BART's generation config: max_length 12 replaces the 256 new tokens; its num_beams 2 does not
# replace the pipeline's 4; min_length, no_repeat_ngram_size, forced BOS/EOS apply
run("summarization", "bart", full=True, calls=(
    {"args": [TEXTS[:3]], "kwargs": {"batch_size": 2}},
    {"args": [TEXTS[0]], "kwargs": {"return_tensors": True}}))
run("text2text-generation", "bart", {"max_new_tokens": 4})
run("translation", "marian", full=True, calls=(
    {"args": [TEXTS[3]], "kwargs": {"max_new_tokens": 3}},))
run("translation_en_to_de", "marian")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("seq2seq"))


@pytest.fixture(scope="module", autouse=True)
def oracle_process(folders, tmp_path_factory):
    """transformers 4.57 on every run, started at once: it works while the tests that need no
    oracle run (they come first in this file)."""
    require_venv()
    spec = {"runs": [{"task": task, "model": str(folders[model]), "init": init, "calls": calls}
                     for task, model, init, calls in RUNS]}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
           and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HOME=str(tmp_path_factory.mktemp("tf4-home")),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    work = tmp_path_factory.mktemp("tf4-driver")
    (work / "spec.json").write_text(json.dumps(spec))
    # files, not pipes: nothing reads the driver's output until the oracle fixture
    with open(work / "spec.json") as stdin, open(work / "stdout", "w") as stdout, \
            open(work / "stderr", "w") as stderr:
        proc = subprocess.Popen([str(VENV_PYTHON), str(DRIVER)], stdin=stdin, stdout=stdout,
                                stderr=stderr, env=env)
    proc.work = work
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def oracle(oracle_process) -> list[list]:
    """Every run's results from transformers 4.57."""
    try:
        oracle_process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("the 4.57 driver did not finish in 600 s", pytrace=False)
    stdout = (oracle_process.work / "stdout").read_text()
    stderr = (oracle_process.work / "stderr").read_text()
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(f"the 4.57 driver printed no JSON (exit {oracle_process.returncode}).\n"
                    f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-5000:]}", pytrace=False)
    if not report["ok"]:
        pytest.fail(f"the 4.57 driver failed:\n{report['error']}", pytrace=False)
    assert report["version"].startswith("4.57."), report["version"]
    return report["runs"]


def _trimmed(value, eos: int):
    """4.57's token ids without a batch's padding: up to the first end-of-sequence token
    after the decoder start (Cove returns them so)."""
    if isinstance(value, list):
        return [_trimmed(v, eos) for v in value]
    if isinstance(value, dict) and any(k.endswith("_token_ids") for k in value):
        (key, ids), = value.items()
        cut = next((i for i in range(1, len(ids)) if ids[i] == eos), len(ids) - 1)
        return {key: ids[:cut + 1]}
    return value


def _call(pipe, call: dict):
    args, kwargs = list(call["args"]), dict(call["kwargs"])
    if call.get("generator"):
        items = args.pop(0)
        result = pipe((item for item in items), *args, **kwargs)
        assert not isinstance(result, list)
        return list(result)
    return pipe(*args, **kwargs)


def test_defaults_and_task_names():
    from cove.pipelines import pipeline

    assert SUPPORTED_TASKS["summarization"][2] == "sshleifer/distilbart-cnn-12-6"
    assert SUPPORTED_TASKS["translation"][2] == "google-t5/t5-base"
    assert SUPPORTED_TASKS["text2text-generation"][2] == "google-t5/t5-base"
    with pytest.raises(ValueError, match="translation_en_to_fr"):
        pipeline("translation")
    with pytest.raises(ValueError, match="no default model for translation from 'en' to 'es'"):
        pipeline("translation_en_to_es")
    with pytest.raises(ValueError, match="Invalid translation task 'translation_en_fr'"):
        pipeline("translation_en_fr")


def test_model_objects_generation_config_and_max_length(folders):
    from cove import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    model = AutoModelForSeq2SeqLM.from_pretrained(folders["t5"])
    tokenizer = AutoTokenizer.from_pretrained(folders["t5"])
    pipe = cove.pipeline("summarization", model=model, tokenizer=tokenizer)
    assert pipe.prefix == "summarize: " and pipe.generation_config.num_beams == 2
    by_name = cove.pipeline("summarization", model=str(folders["t5"]))
    assert pipe(TEXTS, **SHORT) == by_name(TEXTS, **SHORT)
    # A caller's max_length is honoured (4.57 lets the pipeline's 256 new tokens win on T5).
    for length in (3, 5):
        (ids,) = pipe(TEXTS[0], max_length=length, min_length=0, return_tensors=True)
        assert len(ids["summary_token_ids"]) <= length
    # A generation_config replaces the pipeline's (its prefix stays).
    config = GenerationConfig(max_new_tokens=2, num_beams=1)
    (ids,) = pipe(TEXTS[0], generation_config=config, return_tensors=True)
    greedy = model.generate(**tokenizer("summarize: " + TEXTS[0], return_tensors="pt"),
                            max_new_tokens=2, num_beams=1)
    assert ids["summary_token_ids"] == greedy[0].tolist()


def test_stop_sequence_and_return_text(folders):
    pipe = cove.pipeline("text2text-generation", model=str(folders["bart"]))
    (full,) = pipe(TEXTS[2], num_beams=1, max_new_tokens=8, return_tensors=True)
    ids = full["generated_token_ids"]
    # a generated token that is the first token of its own text: generation ends on it
    stop = next(ids[i] for i in range(3, len(ids))
                if pipe.tokenizer.encode(pipe.tokenizer.decode([ids[i]]),
                                         add_special_tokens=False)[:1] == [ids[i]])
    (stopped,) = pipe(TEXTS[2], num_beams=1, max_new_tokens=8, return_tensors=True,
                      stop_sequence=pipe.tokenizer.decode([stop]))
    assert stopped["generated_token_ids"] == ids[:ids.index(stop, 1) + 1]
    texts = pipe(TEXTS[:2], return_text=True, **SHORT)
    assert [list(r) for r in texts] == [["generated_text"]] * 2


def test_errors(folders, tmp_path):
    from cove.pipelines import pipeline

    pipe = pipeline("summarization", model=str(folders["bart"]))
    with pytest.raises(ValueError, match="expects strings, got int"):
        pipe([TEXTS[0], 3])
    with pytest.raises(ValueError, match="got dict"):
        pipe({"text": TEXTS[0]})
    with pytest.raises(ValueError, match="return_text=False needs return_tensors=True"):
        pipe(TEXTS[0], return_text=False)
    with pytest.raises(ValueError, match="stop_sequence must be a non-empty string"):
        pipe(TEXTS[0], stop_sequence="")
    with pytest.raises(ValueError, match="generation_config must be a GenerationConfig"):
        pipe(TEXTS[0], generation_config={"max_new_tokens": 2})
    with pytest.raises(ValueError, match="src_lang must be a language code"):
        pipeline("translation", model=str(folders["marian"]))(TEXTS[0], src_lang=3)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pipe(TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="not used by the model"):
        pipe(TEXTS[0], max_new_tokenz=3, **SHORT)
    pipe.tokenizer.pad_token = None
    with pytest.raises(ValueError, match="pad_token_id when using a batch input"):
        pipe(TEXTS, batch_size=2)
    # a model without a language modeling head, by name and as an object
    with pytest.raises(ValueError, match="has no seq2seq-lm head"):
        pipeline("summarization", model=str(folders["bart_mnli"]))
    classifier = cove.AutoModelForSequenceClassification.from_pretrained(folders["bart_mnli"])
    with pytest.raises(ValueError, match="cannot run the 'translation' task"):
        pipeline("translation", model=classifier, tokenizer=str(folders["bart_mnli"]))


def test_task_inferred_from_the_architecture(folders):
    assert cove.pipeline(model=str(folders["t5"])).task == "text2text-generation"
    assert cove.pipeline(model=str(folders["marian"])).task == "translation"


def test_cove_run(folders):
    from tests.cli.test_run import cove_run, lines

    for task, model in (("summarization", "t5"), ("text2text-generation", "bart"),
                        ("translation_en_to_de", "marian")):
        want = cove.pipeline(task, model=str(folders[model]))(TEXTS[:2], max_new_tokens=3)
        got = lines(cove_run(task, *TEXTS[:2], "--model", folders[model], "--arg",
                             "max_new_tokens=3"))
        assert got == [[record] for record in want]


def test_bart_zero_shot_equals_transformers(folders):
    """zero-shot-classification's default model is BART: a tiny MNLI-style one end to end."""
    import transformers

    labels = ["cat", "dog", "weather", "movie"]
    ours = cove.pipeline("zero-shot-classification", model=str(folders["bart_mnli"]))
    theirs = transformers.pipeline("zero-shot-classification", model=str(folders["bart_mnli"]))
    for kwargs in ({}, {"multi_label": True}, {"batch_size": 3}):
        got, want = ours(TEXTS, labels, **kwargs), theirs(TEXTS, labels, **kwargs)
        for a, b in zip(got, want, strict=True):
            assert a["sequence"] == b["sequence"] and a["labels"] == b["labels"]
            torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-5)


# -- against 4.57 (last: the oracle runs meanwhile) ---------------------------------------------
@pytest.mark.parametrize("index", range(len(RUNS)),
                         ids=[f"{task}-{model}" for task, model, _, _ in RUNS])
def test_same_results_as_transformers_4(folders, oracle, index):
    task, model, init, calls = RUNS[index]
    pipe = cove.pipeline(task, model=str(folders[model]), **init)
    eos = pipe.model.generation_config.eos_token_id
    key = {"summarization": "summary", "text2text-generation": "generated"}.get(
        task, "translation")
    for call, theirs in zip(calls, oracle[index], strict=True):
        assert not (isinstance(theirs, dict) and "error" in theirs), theirs
        ours = _call(pipe, call)
        assert ours == _trimmed(theirs, eos), call
        # the shapes: a list of records per input; a flat list for a list of inputs with
        # one sequence each
        one = ours[0] if isinstance(call["args"][0], list) else ours
        assert isinstance(one, (list, dict))
        record = one[0] if isinstance(one, list) else one
        wanted = f"{key}_token_ids" if call["kwargs"].get("return_tensors") else f"{key}_text"
        assert list(record) == [wanted]
