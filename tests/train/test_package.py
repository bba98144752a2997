"""cove.trainer's lazy names: importing the package or the arguments loads no torch."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_arguments_and_callbacks_load_without_torch():
    loaded = loaded_after("import cove.trainer\nfrom cove.trainer import TrainingArguments, "
                          "TrainerState, DefaultFlowCallback\nTrainingArguments(eval_strategy="
                          "'steps')")
    assert "cove.trainer.callbacks" in loaded
    assert not loaded & {"torch", "transformers", "cove.models", "cove.trainer.optimization",
                         "cove.trainer.data_collator"}


def test_missing_names_say_what_transformers_has():
    import pytest

    import cove.trainer

    with pytest.raises(AttributeError, match=r"'cove.trainer' has no 'DataCollatorWithFlattening' "
                                             r"yet: transformers \([^)]*\) has it"):
        cove.trainer.DataCollatorWithFlattening  # noqa: B018
    missing = "DataCollatorForPermutationLanguageModeling"
    with pytest.raises(ImportError, match=f"has no '{missing}' yet"):
        from cove.trainer import DataCollatorForPermutationLanguageModeling  # noqa: F401
