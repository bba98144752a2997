"""Experiment trackers for `Accelerator(log_with=...)`: "jsonl" (Cove's own: one JSON object
per `log` call) and "tensorboard" (when the tensorboard package is installed), or any object
with accelerate's tracker methods (a `GeneralTracker` subclass)."""

from __future__ import annotations

import importlib.util
import json
import numbers
import os
from typing import Any

from cove.accelerate.checkpointing import write_text

_KNOWN = ("jsonl", "tensorboard")
_ELSEWHERE = ("wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio")


class GeneralTracker:
    """A tracker: `name`, `store_init_configuration(config)`, `log(values, step)`, `finish()`.

    Subclass it (as in accelerate) to pass your own tracker in `log_with`.
    """

    name = "general"
    requires_logging_directory = False

    def store_init_configuration(self, values: dict) -> None:
        """Record the run's hyperparameters."""

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        """Record `values` (name -> number or text) at `step`."""

    def finish(self) -> None:
        """Flush and close."""

    @property
    def tracker(self) -> Any:
        """The underlying object (the writer), for what this class does not cover."""
        return self


def _plain(value: Any) -> Any:
    """A JSON-able form of a logged value (tensors and numpy scalars as numbers or lists)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class JSONLinesTracker(GeneralTracker):
    """`<logging_dir>/<project>/metrics.jsonl`: one {"step": ..., name: value, ...} per line,
    appended (a resumed run continues the file); the config in `config.json` beside it."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str, **kwargs: Any) -> None:
        self.directory = os.path.join(logging_dir, run_name)
        os.makedirs(self.directory, exist_ok=True)
        self.path = os.path.join(self.directory, "metrics.jsonl")
        self._file = open(self.path, "a", encoding="utf-8")

    @property
    def tracker(self) -> Any:
        return self._file

    def store_init_configuration(self, values: dict) -> None:
        write_text(os.path.join(self.directory, "config.json"),
                   json.dumps(_plain(values), indent=2, default=str) + "\n")

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self._file.write(json.dumps({"step": step, **_plain(values)}, default=str) + "\n")
        self._file.flush()  # a line is whole on disk once log returns

    def finish(self) -> None:
        self._file.close()


class TensorBoardTracker(GeneralTracker):
    """TensorBoard event files in `<logging_dir>/<project>` (torch.utils.tensorboard)."""

    name = "tensorboard"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str, **kwargs: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logging_dir = os.path.join(logging_dir, run_name)
        self.writer = SummaryWriter(self.logging_dir, **kwargs)

    @property
    def tracker(self) -> Any:
        return self.writer

    def store_init_configuration(self, values: dict) -> None:
        self.writer.add_hparams({k: v if isinstance(v, (numbers.Number, str, bool)) else str(v)
                                 for k, v in values.items()}, metric_dict={})
        self.writer.flush()

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        for key, value in _plain(values).items():
            if isinstance(value, numbers.Number):
                self.writer.add_scalar(key, value, global_step=step, **kwargs)
            elif isinstance(value, str):
                self.writer.add_text(key, value, global_step=step, **kwargs)
            elif isinstance(value, dict):
                self.writer.add_scalars(key, value, global_step=step, **kwargs)
            else:
                raise TypeError(f"log: {key!r} is a {type(value).__name__}; the tensorboard "
                                f"tracker logs numbers, texts and dicts of numbers")
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


def check_log_with(log_with: Any) -> list[Any]:
    """`log_with` as a list of tracker names and objects; a clear error for what cannot be."""
    if log_with is None:
        return []
    entries = log_with if isinstance(log_with, (list, tuple)) else [log_with]
    out: list[Any] = []
    for entry in entries:
        if isinstance(entry, GeneralTracker):
            out.append(entry)
            continue
        name = str(getattr(entry, "value", entry)).lower()  # (accelerate's LoggerType enum)
        if name == "all":
            out += ["jsonl"] + (["tensorboard"] if _has_tensorboard() else [])
        elif name == "tensorboard" and not _has_tensorboard():
            raise ValueError("log_with='tensorboard' needs the tensorboard package "
                             "(pip install tensorboard); log_with='jsonl' needs nothing")
        elif name in _KNOWN:
            out.append(name)
        elif name in _ELSEWHERE:
            raise ValueError(f"log_with={name!r}: Cove does not ship that tracker; use 'jsonl' "
                             f"or 'tensorboard', or pass a GeneralTracker subclass of your own")
        else:
            raise ValueError(f"log_with={entry!r}: expected 'jsonl', 'tensorboard', 'all' or a "
                             f"GeneralTracker")
    return list(dict.fromkeys(out))


def _has_tensorboard() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def make_tracker(name: str, project_name: str, logging_dir: str | None,
                 init_kwargs: dict | None) -> GeneralTracker:
    if logging_dir is None:
        raise ValueError(f"log_with={name!r} writes files: give the Accelerator a project_dir")
    cls = JSONLinesTracker if name == "jsonl" else TensorBoardTracker
    return cls(project_name, logging_dir, **(init_kwargs or {}).get(name, {}))
