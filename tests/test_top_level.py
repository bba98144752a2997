"""The drop-in names: `from cove import ...` as `from transformers import ...`, lazily.

The lazy packages (cove, cove.datasets, cove.trainer) are checked alike: every exported name resolves to its
package's object, the TYPE_CHECKING imports list exactly the exported names (what IDEs see),
unknown names fail with a message that says whether the reference library has them, and
importing the package (or one name) loads only what that name needs.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys

import pytest

import cove
import cove.datasets
from cove._lazy import reference_names

LAZY_PACKAGES = {"cove": "transformers", "cove.datasets": "datasets",
                 "cove.trainer": "transformers", "cove.accelerate": "accelerate",
                 "cove.peft": "peft", "cove.trl": "trl"}


def _imports_after(code: str) -> dict:
    """sys.modules (cove's, and some heavy libraries) after `code` in a fresh interpreter."""
    probe = (f"{code}\nimport json, sys\n"
             "print(json.dumps(sorted(m for m in sys.modules if '.' not in m or m.startswith('cove'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_cove_is_light():
    loaded = _imports_after("import cove")
    assert not loaded & {"torch", "numpy", "tokenizers", "pyarrow", "httpx", "jinja2", "fastapi",
                         "sqlalchemy", "cove.models", "cove.tokenizers", "cove.pipelines"}


def test_importtime_shows_no_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import cove"],
                         capture_output=True, text=True, check=True)
    modules = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
               if line.startswith("import time:")]
    assert "cove" in modules and "cove._lazy" in modules
    assert not [m for m in modules if m.split(".")[0] in ("torch", "numpy", "transformers")]


def test_one_name_loads_what_it_needs_only():
    model = _imports_after("from cove import AutoModel")
    assert {"torch", "cove.models", "cove.models.auto"} <= model
    assert not model & {"cove.tokenizers", "cove.pipelines", "cove.datasets", "cove.hub.api",
                        "cove.server", "tokenizers", "pyarrow", "httpx", "jinja2", "transformers"}
    tokenizer = _imports_after("from cove import AutoTokenizer")
    assert "cove.tokenizers" in tokenizer
    assert not tokenizer & {"torch", "cove.models", "cove.pipelines", "httpx", "transformers"}
    dataset = _imports_after("from cove.datasets import Dataset")
    assert not dataset & {"torch", "cove.models", "datasets"}


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    for where, names in module._EXPORTS.items():
        source = importlib.import_module(where)
        for name in names:
            assert getattr(module, name) is getattr(source, name), name
    assert module.__all__ == sorted(n for names in module._EXPORTS.values() for n in names)
    assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_type_checkers_see_the_exported_names(package):
    """The TYPE_CHECKING block imports exactly the table's names from the same modules."""
    module = importlib.import_module(package)
    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    blocks = [node for node in tree.body if isinstance(node, ast.If)
              and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1
    seen: dict[str, set[str]] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom)
        seen.setdefault(node.module, set()).update(a.name for a in node.names)
    assert seen == {m: set(names) for m, names in module._EXPORTS.items()}


def test_cove_names_are_transformers_names_and_complete():
    """Every top-level name is a transformers name; every transformers-named public object of
    cove.models, cove.tokenizers, cove.generation and cove.pipelines is at the top level."""
    reference = reference_names("transformers")
    assert not [n for n in cove.__all__ if n not in reference]
    # transformers 4.57's top-level create_optimizer is TensorFlow's, with another signature
    kept_in_package = {"create_optimizer"}
    for package in ("cove.models", "cove.tokenizers", "cove.generation", "cove.pipelines",
                    "cove.trainer"):
        public = importlib.import_module(package).__all__
        assert not [n for n in public if n in reference and n not in cove.__all__
                    and n not in kept_in_package], package
    for name in ("AutoTokenizer", "AutoModelForSequenceClassification", "PretrainedConfig",
                 "PreTrainedModel", "PreTrainedTokenizerFast", "BatchEncoding", "pipeline",
                 "GenerationConfig", "TextStreamer", "TextIteratorStreamer", "set_seed",
                 "LogitsProcessorList", "StoppingCriteriaList", "TextClassificationPipeline",
                 "Trainer", "TrainingArguments", "DataCollatorWithPadding", "TrainerCallback"):
        assert name in cove.__all__


def test_reference_names_match_the_installed_oracle():
    transformers = pytest.importorskip("transformers")
    recorded = reference_names("transformers")
    # (submodules some other test imported show up in dir(); they are not public names)
    current = {n for n in dir(transformers) if n.isidentifier() and not n.startswith("_")
               and f"transformers.{n}" not in sys.modules}
    if not any(transformers.__version__ in v for v in recorded.values()):
        pytest.skip("names recorded from other versions; run tests/reference_names.py")
    assert current <= set(recorded)
    datasets = pytest.importorskip("datasets")
    assert {n for n in dir(datasets) if not n.startswith("_") and f"datasets.{n}" not in
            sys.modules} <= set(reference_names("datasets"))


def test_missing_names_say_whether_the_reference_has_them():
    with pytest.raises(AttributeError, match=r"'cove' has no 'AutoModelForImageClassification' "
                       r"yet: transformers \([^)]*5\.\d+[^)]*\) has it, Cove does not "
                       r"implement it yet"):
        cove.AutoModelForImageClassification  # noqa: B018
    with pytest.raises(AttributeError, match=r"no attribute 'AutoTokenzer' \(transformers has no "
                       r"such name either\)\. Did you mean: AutoTokenizer"):
        cove.AutoTokenzer  # noqa: B018
    with pytest.raises(AttributeError, match=r"'cove.datasets' has no 'Image' yet: datasets"):
        cove.datasets.Image  # noqa: B018
    assert not hasattr(cove, "NoSuchThing")
    assert getattr(cove, "NoSuchThing", 7) == 7
    with pytest.raises(AttributeError):  # dunder probes (copy, pickle) get a plain miss
        cove.__wrapped__  # noqa: B018


def test_from_import_of_a_missing_name_keeps_the_message():
    # Python would replace an AttributeError with its own "cannot import name": ours says more.
    with pytest.raises(ImportError, match=r"cannot import name 'AutoModelForImageClassification' "
                       r"from 'cove': 'cove' has no 'AutoModelForImageClassification' yet: "
                       r"transformers"):
        from cove import AutoModelForImageClassification  # noqa: F401
    with pytest.raises(ImportError, match=r"'cove.datasets' has no 'Audio' yet"):
        from cove.datasets import Audio  # noqa: F401


def test_set_seed_matches_transformers():
    import random

    import numpy as np
    import torch
    transformers = pytest.importorskip("transformers")

    def draws():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    transformers.set_seed(1234)
    expected = draws()
    cove.set_seed(1234)
    assert draws() == expected
    with pytest.raises(TypeError, match="seed must be an int"):
        cove.set_seed("1234")
