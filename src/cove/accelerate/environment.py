"""The launcher's environment variables, read without importing torch (TrainingArguments reads
them too): torchrun's WORLD_SIZE / RANK / LOCAL_RANK and `cove launch`'s COVE_* settings."""

from __future__ import annotations

import os


def env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={os.environ[name]!r}: expected 1/true/yes or 0/false/no")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer (is this process launched by "
                         f"torchrun / cove launch?)") from None
