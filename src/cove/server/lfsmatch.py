"""Which paths `.gitattributes` sends to LFS (the `filter=lfs` patterns, git's wildmatch)."""

from __future__ import annotations

import fnmatch
import re


def lfs_patterns(gitattributes: str) -> list[str]:
    patterns = []
    for line in gitattributes.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and not parts[0].startswith("#"):
            if "filter=lfs" in parts[1:]:
                patterns.append(parts[0])
            elif "-filter" in parts[1:] or "!filter" in parts[1:]:
                patterns = [p for p in patterns if p != parts[0]]
    return patterns


def _to_regex(pattern: str) -> re.Pattern:
    pattern = pattern.lstrip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def matches(patterns: list[str], path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    for p in patterns:
        if "/" in p.rstrip("/"):
            if _to_regex(p).match(path):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
    return False
