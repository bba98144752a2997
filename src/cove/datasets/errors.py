"""Exceptions raised by cove.datasets (names as in Hugging Face `datasets`).

Bad arguments raise the built-in ValueError / KeyError / TypeError with a specific message;
these classes are for failures to find or read a dataset.
"""

from __future__ import annotations


class DatasetsError(Exception):
    """Base class of the cove.datasets errors."""


class DatasetNotFoundError(DatasetsError, FileNotFoundError):
    """The dataset (a Hub repo, a folder or a script name) does not exist or is not accessible."""


class DataFilesNotFoundError(DatasetsError, FileNotFoundError):
    """No data file matches the given `data_files` / `data_dir` patterns."""
