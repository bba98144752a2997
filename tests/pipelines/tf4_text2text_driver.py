"""Run transformers 4.57's text2text-generation, summarization and translation pipelines: the
oracle for Cove's (5.x dropped them).

A plain script, run by tests/pipelines/test_text2text.py with `.venv-tf4/bin/python`: it must
not import pytest or cove. It reads one JSON object on stdin:

    {"runs": [{"task": TASK, "model": FOLDER, "init": {...},
               "calls": [{"args": [...], "kwargs": {...}, "generator": false}, ...]}, ...]}

builds `pipeline(TASK, model=FOLDER, **init)` for each run and makes its calls (see
tf4_driver.call). Token-id tensors come back as lists. It prints one JSON object on stdout:
{"ok": true, "version": ..., "runs": [[result, ...], ...]}, or {"ok": false, "error": ...} and
exit status 1 when a model cannot be loaded faithfully.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings

from tf4_driver import call


def load(task: str, folder: str, init: dict):
    """The pipeline on `folder`, after checking that 4.57 reads every weight of it."""
    from transformers import AutoModelForSeq2SeqLM, pipeline

    _, info = AutoModelForSeq2SeqLM.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"transformers 4.57 did not load {folder} cleanly: {problems}")
    return pipeline(task, model=folder, tokenizer=folder, device="cpu", **init)


def main() -> int:
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")  # deprecation chatter on stderr only
    spec = json.load(sys.stdin)
    try:
        runs = []
        for run in spec["runs"]:
            pipe = load(run["task"], run["model"], run.get("init", {}))
            runs.append([call(pipe, c) for c in run["calls"]])
    except Exception:  # noqa: BLE001 - the test shows the traceback
        print(json.dumps({"ok": False, "error": traceback.format_exc()}))
        return 1
    print(json.dumps({"ok": True, "version": transformers.__version__, "runs": runs},
                     default=lambda o: o.tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
