"""Run transformers 4.57's question-answering pipeline: the oracle for Cove's (5.x dropped it).

A plain script, run by tests/pipelines/test_qa_oracle.py with `.venv-tf4/bin/python` (`make
.venv-tf4`): it must not import pytest or cove. It reads one JSON object on stdin:

    {"runs": [{"model": FOLDER, "calls": [{"args": [...], "kwargs": {...},
                                           "generator": false}, ...]}, ...]}

and calls `pipeline("question-answering", model=FOLDER, tokenizer=FOLDER)(*args, **kwargs)` for
each call (with "generator": true, args[0] is a list fed to the pipeline as a generator). It
prints one JSON object on stdout: {"ok": true, "version": ..., "runs": [[result, ...], ...]},
where a call that raised gives {"error": "ExceptionType: message"}, or {"ok": false, "error":
...} and exit status 1 when a model cannot be loaded faithfully.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings


def load(folder: str):
    """The pipeline on `folder`, after checking that 4.57 reads every weight of it (a model
    saved by transformers 5 that 4.57 half-loads would make a meaningless oracle)."""
    from transformers import AutoModelForQuestionAnswering, pipeline

    _, info = AutoModelForQuestionAnswering.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"transformers 4.57 did not load {folder} cleanly: {problems}")
    qa = pipeline("question-answering", model=folder, tokenizer=folder, device="cpu")
    if not qa.tokenizer.is_fast:
        raise RuntimeError(f"{folder}: 4.57 loaded a slow tokenizer ({type(qa.tokenizer)})")
    return qa


def call(qa, spec: dict):
    args, kwargs = list(spec.get("args", [])), dict(spec.get("kwargs", {}))
    try:
        if spec.get("generator"):
            items = args.pop(0)
            return list(qa((item for item in items), *args, **kwargs))
        return qa(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the tokenizers' Rust panics are BaseExceptions
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")  # deprecation chatter on stderr only
    spec = json.load(sys.stdin)
    try:
        runs = []
        for run in spec["runs"]:
            qa = load(run["model"])
            runs.append([call(qa, c) for c in run["calls"]])
    except Exception:  # noqa: BLE001 - the test shows the traceback
        print(json.dumps({"ok": False, "error": traceback.format_exc()}))
        return 1
    # scores are Python floats and offsets ints already; default= guards numpy scalars
    print(json.dumps({"ok": True, "version": transformers.__version__, "runs": runs},
                     default=lambda o: o.item()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
