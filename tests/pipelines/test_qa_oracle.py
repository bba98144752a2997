"""question-answering against the real transformers 4.57 pipeline (5.x dropped the task).

4.57 needs huggingface_hub<1.0, which conflicts with the 2.x client of the main venv, so it lives
in `.venv-tf4` (`make .venv-tf4`) and runs in a subprocess: tests/pipelines/tf4_driver.py. The
tiny models are saved by the main venv's transformers 5 with a hand-written vocab.txt (see
conftest.py); the driver checks that 4.57 loads every weight of them. Every call below runs in
both libraries, and the answers (text, start, end) must be equal and the scores close.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

import cove
from tests.pipelines.conftest import QA_CONTEXT, TINY, VOCAB, randomize, write_tokenizer

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv-tf4" / "bin" / "python"
DRIVER = Path(__file__).with_name("tf4_driver.py")

QUESTIONS = ["what was terrible?", "who sat on the mat", "is it good"]
# Repeated words in several cases: 4.57 merges answers whose texts are equal ignoring case.
MIXED = "The cat sat on THE mat. the dog, The fox and the cat!"
CONTEXTS = [QA_CONTEXT, "the cat sat on the mat", "hello world", MIXED]
UNICODE = "Le café était très bon, mais le thé… non! 東京 a b ÉTÉ naïve"
SPACES = "  the   cat\tsat\n\n on   the mat  "
TWICE = f"{QA_CONTEXT} {QA_CONTEXT.upper()}"  # (the tokenizer lowercases: merges across case)
ITEMS = [{"question": q, "context": c} for q in QUESTIONS for c in CONTEXTS]
LONG = {"max_seq_len": 32, "doc_stride": 16}

# name -> (model, call): call is {"args": [...], "kwargs": {...}, "generator": bool}
CASES: dict[str, tuple[str, dict]] = {}


def case(name: str, *args, model: str = "qa", generator: bool = False, **kwargs) -> None:
    CASES[name] = (model, {"args": list(args), "kwargs": kwargs, "generator": generator})
    if kwargs.get("batch_size", 1) > 1:  # the same call unbatched, see test_matches_...
        unbatched = {k: v for k, v in kwargs.items() if k != "batch_size"}
        CASES[f"{name}@1"] = (model, {"args": list(args), "kwargs": unbatched,
                                      "generator": generator})


for _i, _item in enumerate(ITEMS):
    case(f"dict-{_i}", _item)
case("kwargs", question=QUESTIONS[0], context=QA_CONTEXT)
case("positional-pair", QUESTIONS[1], CONTEXTS[1])
case("positional-dicts", ITEMS[0], ITEMS[5])
case("list", ITEMS)
case("list-batch4", ITEMS, batch_size=4)
case("list-of-one", ITEMS[:1])
case("empty-list", [])
case("one-word", {"question": "is it good", "context": "hello"}, top_k=5)
case("tuple", tuple(ITEMS[:3]))
case("generator", ITEMS, generator=True)
case("generator-batch4", ITEMS, generator=True, batch_size=4)
case("questions-one-context", question=QUESTIONS, context=QA_CONTEXT)
case("questions-contexts", question=QUESTIONS, context=CONTEXTS[:3])
case("one-question-in-list", question=QUESTIONS[:1], context=QA_CONTEXT)
for _k in (2, 3, 10):
    case(f"top_k-{_k}", ITEMS[0], top_k=_k)
case("topk-alias", ITEMS[1], topk=3)
case("top_k-list-batch4", ITEMS, top_k=3, batch_size=4)
case("top_k-generator", ITEMS[:6], generator=True, top_k=4, batch_size=2)
for _seq, _stride in [(24, 8), (32, 16), (40, 4), (48, 30)]:
    for _align in (True, False):
        case(f"long-{_seq}-{_stride}-align{_align}", ITEMS[0], top_k=5, max_seq_len=_seq,
             doc_stride=_stride, align_to_words=_align)
case("long-default-stride", ITEMS[3], top_k=3, max_seq_len=24)
# 64 tokens and a stride of 32 by default (the tiny model's model_max_length): 3 windows
for _k in (1, 5):
    case(f"long-defaults-top_k-{_k}", {"question": QUESTIONS[1], "context": TWICE}, top_k=_k)
case("long-defaults-impossible", {"question": QUESTIONS[2], "context": TWICE}, top_k=3,
     handle_impossible_answer=True)
case("long-list-batch4", ITEMS, top_k=2, batch_size=4, **LONG)
for _len in (1, 2, 4):
    case(f"max_answer_len-{_len}", ITEMS[0], top_k=3, max_answer_len=_len, **LONG)
case("impossible", ITEMS[0], handle_impossible_answer=True)
case("impossible-top10", ITEMS[4], top_k=10, handle_impossible_answer=True, **LONG)
case("impossible-short", {"question": "is it good", "context": "hello world"},
     handle_impossible_answer=True, top_k=3)
case("impossible-list-batch4", ITEMS, handle_impossible_answer=True, batch_size=4, **LONG)
# top_k beyond the candidates: 4.57 pads with the 0-score spans, merged by text
case("everything", ITEMS[1], top_k=100000, handle_impossible_answer=True)
case("everything-long", ITEMS[0], top_k=100000, max_answer_len=3, **LONG)
case("no-align", ITEMS[0], top_k=5, align_to_words=False)
case("no-align-mixed", ITEMS[3], top_k=10, align_to_words=False)
case("mixed-case", ITEMS[11], top_k=10)
case("max_question_len", ITEMS[0], max_question_len=2)
case("padding-max_length", ITEMS[0], top_k=3, padding="max_length", **LONG)
case("padding-longest-list", ITEMS, top_k=2, padding=True, batch_size=4, **LONG)
case("doc_stride-0", ITEMS[0], top_k=3, max_seq_len=24, doc_stride=0)
# "what was terrible?" is 7 tokens: 16 - 7 - 3 leaves 6 per span, more than a stride of 5
case("stride-just-fits", ITEMS[0], top_k=3, max_seq_len=16, doc_stride=5)
case("long-question-fits", {"question": QA_CONTEXT[:60], "context": "hello world"},
     max_seq_len=30, doc_stride=20)
case("unicode", {"question": "was the café good?", "context": UNICODE}, top_k=10)
case("unicode-no-align", {"question": "was it good?", "context": UNICODE}, top_k=10,
     align_to_words=False)
case("whitespace", {"question": "who sat?", "context": SPACES}, top_k=5)
# left padding only unbatched: padding on the left shifts BERT's absolute positions, so batched
# answers depend on the batch (in 4.57 as in Cove)
case("left-padding", ITEMS[0], model="qa_left", top_k=5)
case("left-padding-long", ITEMS[0], model="qa_left", top_k=5, **LONG)
case("left-padding-list", ITEMS, model="qa_left", handle_impossible_answer=True)
case("distilbert", ITEMS, model="qa_distil", top_k=3)
case("distilbert-long", ITEMS[0], model="qa_distil", top_k=3, **LONG)
# errors: both must refuse; Cove with a ValueError that says why (4.57's types and messages
# differ: a KeyError for a missing key, the tokenizer's own error or Rust panic for the spans)
ERRORS = {  # name -> (input or None, kwargs, what Cove's message says)
    "error-top_k": (ITEMS[0], {"top_k": 0}, "top_k"),
    "error-max_answer_len": (ITEMS[0], {"max_answer_len": 0}, "max_answer_len"),
    "error-stride": (ITEMS[0], {"max_seq_len": 16, "doc_stride": 17}, "larger than"),
    "error-missing-context": ({"question": "what?"}, {}, "context is missing"),
    "error-empty-question": ({"question": "", "context": "hello"}, {}, "empty"),
    "error-lengths": (None, {"question": QUESTIONS, "context": CONTEXTS[:2]}, "same length"),
    "error-question-too-long": ({"question": QA_CONTEXT, "context": "hello"},
                                {"max_seq_len": 16, "doc_stride": 4}, "shorten the question"),
    "error-no-room-for-stride": ({"question": QUESTIONS[0], "context": QA_CONTEXT},
                                 {"max_seq_len": 16, "doc_stride": 6}, r"doc_stride \(6\)"),
    "error-long-question-stride-0": ({"question": QA_CONTEXT[:60], "context": QA_CONTEXT},
                                     {"max_seq_len": 16, "doc_stride": 0}, "leaving 0 of"),
}
for _name, (_input, _kwargs, _) in ERRORS.items():
    if _input is None:
        case(_name, **_kwargs)
    else:
        case(_name, _input, **_kwargs)


def require_venv() -> None:
    if not VENV_PYTHON.exists():
        pytest.fail(
            f"{VENV_PYTHON} is missing: run `make .venv-tf4` to create the transformers 4.57 "
            "venv whose question-answering pipeline these tests compare Cove with.",
            pytrace=False,
        )


def test_tf4_venv_present():
    require_venv()  # a missing venv is a failure, never a silent skip


@pytest.fixture(scope="module")
def models(qa_folder, tmp_path_factory) -> dict[str, Path]:
    """The conftest's QA model, the same weights with a left-padding tokenizer (4.57 then puts
    the context first), and a DistilBERT QA model (no token_type_ids)."""
    import shutil

    import transformers

    root = tmp_path_factory.mktemp("qa-oracle")
    left = root / "qa_left"
    shutil.copytree(qa_folder, left)
    config = json.loads((left / "tokenizer_config.json").read_text())
    (left / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    config = transformers.DistilBertConfig(
        vocab_size=len(dict.fromkeys(VOCAB)), dim=TINY["hidden_size"],
        n_layers=TINY["num_hidden_layers"], n_heads=TINY["num_attention_heads"],
        hidden_dim=TINY["intermediate_size"], max_position_embeddings=64)
    distil = root / "qa_distil"
    randomize(transformers.DistilBertForQuestionAnswering(config), seed=22).save_pretrained(distil)
    write_tokenizer(distil)
    config = json.loads((distil / "tokenizer_config.json").read_text())
    (distil / "tokenizer_config.json").write_text(json.dumps(
        {**config, "tokenizer_class": "DistilBertTokenizer"}))
    return {"qa": qa_folder, "qa_left": left, "qa_distil": distil}


@pytest.fixture(scope="module")
def oracle(models, tmp_path_factory) -> dict[str, object]:
    """Every case's result from transformers 4.57, in one subprocess."""
    require_venv()
    names = {model: [n for n, (m, _) in CASES.items() if m == model] for model in models}
    spec = {"runs": [{"model": str(models[model]), "calls": [CASES[n][1] for n in ns]}
                     for model, ns in names.items()]}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
           and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HOME=str(tmp_path_factory.mktemp("tf4-home")),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([str(VENV_PYTHON), str(DRIVER)], input=json.dumps(spec), env=env,
                          capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(f"the 4.57 driver printed no JSON (exit {proc.returncode}).\nstdout:\n"
                    f"{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}", pytrace=False)
    if not report["ok"]:
        pytest.fail(f"the 4.57 driver failed:\n{report['error']}", pytrace=False)
    assert report["version"].startswith("4.57."), report["version"]
    results = {}
    for (_, ns), run in zip(names.items(), report["runs"], strict=True):
        results.update(zip(ns, run, strict=True))
    return results


@pytest.fixture(scope="module")
def pipes(models) -> dict[str, object]:
    return {name: cove.pipeline("question-answering", model=str(folder))
            for name, folder in models.items()}


def run_cove(qa, call: dict):
    args, kwargs = list(call["args"]), call["kwargs"]
    if call["generator"]:
        return list(qa(iter(args.pop(0)), *args, **kwargs))
    return qa(*args, **kwargs)


def same(got, want, where: str = "") -> None:
    """Equal structure (a dict, or lists of them), answers, starts and ends; close scores."""
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), \
            f"{where}: {len(want)} results from 4.57, got {got!r:.300}"
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            same(a, b, f"{where}[{i}]")
        return
    assert isinstance(got, dict), f"{where}: 4.57 gives a dict, got {got!r:.300}"
    assert set(got) == {"score", "start", "end", "answer"}
    assert (got["answer"], got["start"], got["end"]) == \
        (want["answer"], want["start"], want["end"]), f"{where}: {got} != 4.57's {want}"
    assert isinstance(got["score"], float)
    assert math.isclose(got["score"], want["score"], rel_tol=1e-4, abs_tol=1e-9), \
        f"{where}: score {got['score']} != 4.57's {want['score']}"


def positive(result) -> list:
    """The answers with a score above 0, as nested lists."""
    if isinstance(result, dict):
        return [result] if result["score"] > 0 else []
    return [positive(r) if isinstance(r, list) else r for r in result
            if isinstance(r, list) or r["score"] > 0]


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("error-") and "@" not in n])
def test_matches_transformers_4_57(name, oracle, pipes):
    model, call = CASES[name]
    want = oracle[name]
    assert not (isinstance(want, dict) and "error" in want), f"4.57 refused {name}: {want}"
    got = run_cove(pipes[model], call)
    if f"{name}@1" not in CASES:
        same(got, want, name)
        return
    # Batched, 4.57 pads the rows' logits, so which 0-score spans fill a top_k beyond the real
    # candidates depends on the batch; Cove's results never do: they are 4.57's unbatched ones.
    same(got, oracle[f"{name}@1"], name)
    same(positive(got), positive(want), name)


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("error-")])
def test_refuses_what_transformers_4_57_refuses(name, oracle, pipes):
    model, call = CASES[name]
    assert "error" in oracle[name], f"4.57 accepted {name}: {oracle[name]}"
    with pytest.raises(ValueError, match=ERRORS[name][2]):
        run_cove(pipes[model], call)


@pytest.mark.parametrize(("context", "kwargs", "least"), [
    (TWICE, {}, 3), (QA_CONTEXT, LONG, 5), (QA_CONTEXT, {"max_seq_len": 24}, 10),
    (QA_CONTEXT, {"max_seq_len": 40, "doc_stride": 4}, 2),
    (QA_CONTEXT, {"max_seq_len": 48, "doc_stride": 30}, 2)])
def test_long_cases_cut_the_context_into_spans(pipes, context, kwargs, least):
    """The long cases above do run several overflow windows."""
    seq = kwargs.get("max_seq_len", 64)
    enc = pipes["qa"].tokenizer(QUESTIONS[1], context, truncation="only_second", max_length=seq,
                                stride=kwargs.get("doc_stride", seq // 2),
                                return_overflowing_tokens=True)
    assert len(enc["input_ids"]) >= least
