"""Split strings: "train", "train+test", "train[:10%]", "test[5:20]", "train[-100:]".

Percent boundaries round to the closest example (Python's round), or with the
"(pct1_dropremainder)" suffix to whole 1% blocks, as datasets' ReadInstruction does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SPLIT_NAME = r"\w+(?:\.\w+)*"
_PART = re.compile(
    rf"^(?P<split>{SPLIT_NAME})"
    r"(?:\[(?:(?P<from>-?[\d_]+)(?P<from_pct>%)?)?:(?:(?P<to>-?[\d_]+)(?P<to_pct>%)?)?\])?"
    r"(?:\((?P<rounding>[^)]*)\))?$"
)
ROUNDINGS = ("closest", "pct1_dropremainder")


@dataclass(frozen=True)
class SplitPart:
    """One term of a split string: a split name and an optional slice of it."""

    split: str
    start: int | None = None
    stop: int | None = None
    percent: bool = False
    rounding: str = "closest"

    def bounds(self, num_examples: int) -> tuple[int, int]:
        """The absolute [start, stop) rows of this part in a split of `num_examples` rows."""
        start, stop = self.start, self.stop
        if self.percent:
            to_rows = _closest if self.rounding == "closest" else _pct1
            start = 0 if start is None else to_rows(start, num_examples)
            stop = num_examples if stop is None else to_rows(stop, num_examples)
        else:
            start = 0 if start is None else start
            stop = num_examples if stop is None else stop
        if start < 0:
            start = max(num_examples + start, 0)
        if stop < 0:
            stop = max(num_examples + stop, 0)
        start, stop = min(start, num_examples), min(stop, num_examples)
        return start, max(start, stop)


def _closest(boundary: int, num_examples: int) -> int:
    return int(round(boundary * num_examples / 100.0))


def _pct1(boundary: int, num_examples: int) -> int:
    if num_examples < 100:
        raise ValueError('"pct1_dropremainder" rounding needs a split of at least 100 examples: '
                         "with fewer it always gives an empty slice.")
    return boundary * math.trunc(num_examples / 100.0)


def parse_split(spec: str) -> list[SplitPart]:
    """The parts of a split string, in order ("train[:10%]+test" -> two parts)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"A split must be a non-empty string like 'train' or 'train[:10%]', "
                         f"got {spec!r}.")
    parts = []
    for term in re.split(r"\s*\+\s*", spec.strip()):
        m = _PART.match(term)
        if not m:
            raise ValueError(f"Unrecognized split {term!r} in {spec!r}: use forms like 'train', "
                             f"'train[:10%]', 'test[5:20]', 'train[-100:]' or 'train+test'.")
        percent = bool(m["from_pct"] or m["to_pct"])
        rounding = m["rounding"]
        if rounding is not None and rounding not in ROUNDINGS:
            raise ValueError(f"Unknown rounding {rounding!r} in {spec!r}: use one of "
                             f"{', '.join(ROUNDINGS)}.")
        if rounding is not None and not percent:
            raise ValueError(f"A rounding applies only to percent slices, not to {term!r}.")
        start = int(m["from"]) if m["from"] else None
        stop = int(m["to"]) if m["to"] else None
        if percent and any(b is not None and abs(b) > 100 for b in (start, stop)):
            raise ValueError(f"Percent slice boundaries must be between -100 and 100 in {term!r}.")
        parts.append(SplitPart(m["split"], start, stop, percent, rounding or "closest"))
    return parts


def split_names(spec: str) -> list[str]:
    """The split names a split string reads, without repeats, in order."""
    return list(dict.fromkeys(part.split for part in parse_split(spec)))


def resolve_split(spec: str, num_examples: dict[str, int]) -> list[tuple[str, int, int]]:
    """(split, start, stop) row ranges for `spec` given each split's size.

    "all" reads every split in order. An unknown split name raises a ValueError listing the
    available ones.
    """
    if spec == "all":
        return [(name, 0, n) for name, n in num_examples.items()]
    ranges = []
    for part in parse_split(spec):
        if part.split not in num_examples:
            raise ValueError(f'Unknown split "{part.split}". Should be one of '
                             f"{list(num_examples)}.")
        start, stop = part.bounds(num_examples[part.split])
        ranges.append((part.split, start, stop))
    return ranges
