"""Split strings against datasets' ReadInstruction (same rows, same rounding)."""

from __future__ import annotations

import pytest

from cove.datasets.splits import parse_split, resolve_split, split_names
from tests.datasets.load_oracle import oracle

SIZES = {"train": 1000, "test": 37, "validation": 150}
SPECS = [
    "train", "test", "train+test", "train[:10%]", "test[5:20]", "train[-100:]", "train[10%:20%]",
    "test[:33%]", "test[-33%:]", "test[33%:66%]", "test[:1%]", "test[1_0:2_0]", "train[:-1]",
    "test[50:]", "test[20:10]", "train[:10%]+test[-5:]", "validation[99%:]",
    "train[:55%](pct1_dropremainder)", "validation[:3%](pct1_dropremainder)", "train[-200:-100]",
    "test[:50%] + test[50%:]",
]


@pytest.mark.parametrize("spec", SPECS)
def test_ranges_match_read_instruction(spec):
    hf = oracle()
    theirs = [(i.splitname, i.from_, i.to)
              for i in hf.ReadInstruction.from_spec(spec).to_absolute(SIZES)]
    ours = resolve_split(spec, SIZES)
    # an inverted slice reads nothing: datasets keeps from_ > to, Cove clamps stop to start
    assert [(s, a, max(a, b)) for s, a, b in theirs] == ours


def test_unknown_split_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"Unknown split \"dev\"\. Should be one of "
                                         r"\['train', 'test', 'validation'\]"):
        resolve_split("train+dev", SIZES)


@pytest.mark.parametrize("bad", ["train[", "train[1:2:3]", "train[:10%](floor)", "train[:5](closest)",
                                 "train[:150%]", "", "tr ain"])
def test_bad_split_strings(bad):
    with pytest.raises(ValueError):
        parse_split(bad)


def test_pct1_needs_100_examples():
    with pytest.raises(ValueError, match="at least 100"):
        resolve_split("test[:10%](pct1_dropremainder)", SIZES)


def test_all_and_names():
    assert resolve_split("all", SIZES) == [("train", 0, 1000), ("test", 0, 37),
                                           ("validation", 0, 150)]
    assert split_names("train[:5]+test+train[5:]") == ["train", "test"]
