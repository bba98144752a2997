"""The Trainer's checkpoint folders: naming, finding the latest complete one, rotation, and the
files besides the model (random states, the dataloader's position), as transformers lays them
out so that checkpoints move between the two libraries.

    output_dir/checkpoint-<step>/
        config.json, model.safetensors       the model (from_pretrained reads it)
        optimizer.pt, scheduler.pt           torch state dicts (scaler.pt under fp16)
        rng_state.pth (rng_state_<rank>.pth) python, numpy and torch random states
        trainer_state.json                   TrainerState, transformers' JSON
        training_args.json                   the TrainingArguments, as JSON (never pickled)
        dataloader_state.json                the epoch and the batches taken in it

A checkpoint is written in a hidden temporary folder and renamed into place once every file
is there (cove.accelerate.checkpointing.atomic_folder), so a folder named checkpoint-<step>
is always complete: a run killed while saving leaves only the temporary folder, which no
resume picks and the next run sweeps away.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cove.accelerate.checkpointing import torch_save, write_text

PREFIX_CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_ARGS_NAME = "training_args.json"
DATALOADER_STATE_NAME = "dataloader_state.json"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SCALER_NAME = "scaler.pt"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# what atomic_folder names its temporary and replaced folders: ".checkpoint-5.tmp-1a2b3c4d"
_PARTIAL_RE = re.compile(rf"^\.{PREFIX_CHECKPOINT_DIR}-\d+\.(tmp|old)-[0-9a-f]+$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a folder named checkpoint-<step>, else None."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a checkpoint folder with its trainer state and model weights (the
    trainer state is written last by transformers too: a folder without it is half-written)."""
    folder = Path(path)
    return ((folder / TRAINER_STATE_NAME).is_file()
            and any((folder / name).is_file() for name in _WEIGHT_FILES))


def get_last_checkpoint(folder: str | os.PathLike) -> str | None:
    """The complete checkpoint-<step> folder with the highest step in `folder`, or None."""
    found = [(checkpoint_step(p), p) for p in Path(folder).iterdir()
             if p.is_dir() and checkpoint_step(p) is not None and is_complete_checkpoint(p)]
    return str(max(found)[1]) if found else None


def check_checkpoint(path: str | os.PathLike) -> str:
    """`path` if it is a complete checkpoint folder; otherwise a clear error saying why not."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"resume_from_checkpoint: {path} does not exist")
    if not folder.is_dir():
        raise ValueError(f"resume_from_checkpoint: {path} is a file, not a checkpoint folder")
    missing = []
    if not (folder / TRAINER_STATE_NAME).is_file():
        missing.append(TRAINER_STATE_NAME)
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        missing.append("model weights (model.safetensors)")
    if missing:
        hint = ""
        if checkpoint_step(folder) is None and any(checkpoint_step(p) is not None
                                                   for p in folder.glob("checkpoint-*")):
            hint = (" It holds checkpoint folders: pass one of them, or "
                    "resume_from_checkpoint=True for the latest.")
        raise ValueError(f"resume_from_checkpoint: {path} is not a Trainer checkpoint "
                         f"(no {' and no '.join(missing)}).{hint}")
    return str(folder)


def sorted_checkpoints(folder: str | os.PathLike) -> list[str]:
    """The checkpoint-<step> folders in `folder`, oldest (lowest step) first."""
    found = [(checkpoint_step(p), str(p)) for p in Path(folder).iterdir()
             if p.is_dir() and checkpoint_step(p) is not None]
    return [path for _, path in sorted(found)]


def rotate_checkpoints(folder: str | os.PathLike, save_total_limit: int | None,
                       best_model_checkpoint: str | None) -> list[str]:
    """Delete the oldest checkpoints beyond `save_total_limit`, never the latest (to resume
    from) nor the best one. Returns the deleted folders."""
    if not save_total_limit:
        return []
    checkpoints = sorted_checkpoints(folder)
    keep = {checkpoints[-1]} if checkpoints else set()
    if best_model_checkpoint is not None:
        keep.add(str(Path(best_model_checkpoint)))
    budget = max(save_total_limit, len(keep))
    deleted = []
    for path in checkpoints:
        if len(checkpoints) - len(deleted) <= budget:
            break
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted


def sweep_partial_checkpoints(folder: str | os.PathLike) -> None:
    """Remove the temporary folders of checkpoint saves that were killed midway."""
    if not os.path.isdir(folder):
        return
    for entry in os.scandir(folder):
        if entry.is_dir() and _PARTIAL_RE.match(entry.name):
            shutil.rmtree(entry.path, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """`data` as indented JSON into `path`, atomically."""
    write_text(os.fspath(path), json.dumps(data, indent=2, sort_keys=True) + "\n")


def rng_file(folder: str | os.PathLike, process_index: int, world_size: int) -> str:
    """transformers' name: rng_state.pth for one process, rng_state_<rank>.pth for several."""
    name = "rng_state.pth" if world_size <= 1 else f"rng_state_{process_index}.pth"
    return os.path.join(folder, name)


def save_rng_state(path: str) -> None:
    """This process's python, numpy and torch (and CUDA) random states, as transformers saves
    them."""
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.random.get_rng_state_all()
    torch_save(states, path)


def _numpy_safe_globals() -> Any:
    # numpy's RNG state holds an array: allow just what that needs under weights_only loading.
    core = getattr(np, "_core", None) or np.core
    return torch.serialization.safe_globals(
        [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))])


def load_rng_state(path: str) -> bool:
    """Restore the random states saved at `path` (Cove's or transformers'); False if there is
    no such file."""
    if not os.path.isfile(path):
        return False
    with _numpy_safe_globals():
        states = torch.load(path, weights_only=True)
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if isinstance(cuda, (list, tuple)):
            torch.cuda.random.set_rng_state_all(cuda)
        else:
            torch.cuda.random.set_rng_state(cuda)
    return True


def load_torch_state(path: str, device: torch.device | str = "cpu") -> Any:
    """A torch state dict file (optimizer, scheduler, scaler), without unpickling code."""
    return torch.load(path, map_location=device, weights_only=True)
