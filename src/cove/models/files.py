"""Finding a model's files: in a local folder, or on the Hub through cove.hub's cache."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    required: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    subfolder: str | None = None,
    endpoint: str | None = None,
) -> Path | None:
    """The local path of `filename`, downloading it if needed; None if absent and optional."""
    local = Path(name_or_path)
    if subfolder:
        local = local / subfolder
    if local.is_dir():
        path = local / filename
        if path.is_file():
            return path
        if required:
            raise FileNotFoundError(f"{filename} not found in the folder {local}.")
        return None
    name = str(name_or_path)
    if name.startswith((".", "/")) or name.count("/") > 1:
        raise FileNotFoundError(
            f"{name!r} is neither a folder nor a Hub repository id (namespace/name)."
        )
    # Imported here: loading from a folder never pays for the HTTP client's import.
    from cove.hub import EntryNotFoundError, hf_hub_download

    try:
        return Path(hf_hub_download(
            name, filename, subfolder=subfolder, revision=revision, token=token,
            cache_dir=cache_dir, local_files_only=local_files_only,
            force_download=force_download, endpoint=endpoint,
        ))
    except EntryNotFoundError:
        if required:
            raise
        return None
