"""`set_seed`: one call seeds every random number generator a run uses."""

from __future__ import annotations

import os
import random


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python's `random`, NumPy and PyTorch (CPU and every GPU) with `seed`.

    With `deterministic=True`, PyTorch also refuses nondeterministic kernels (and cuBLAS is
    asked for its deterministic workspace), trading speed for runs that repeat bit for bit.
    """
    import numpy as np
    import torch

    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seeding takes 32 bits only
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
