"""Suite-wide settings: offline, no telemetry, no Xet, a private HF cache, one thread."""

import atexit
import os
import shutil
import tempfile


def _run_folder(variable: str, prefix: str) -> None:
    """Point `variable` at a temp folder for this run unless it is set: the first pytest process
    makes it (xdist workers and the processes tests start inherit it) and removes it when it
    exits, so a run leaves nothing behind however many gigabytes it cached."""
    if variable not in os.environ:
        os.environ[variable] = folder = tempfile.mkdtemp(prefix=prefix)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


# huggingface_hub reads these when it is imported: set them before any test imports it.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
_run_folder("HF_HOME", "cove-hf-home-")
# GGUF files converted once per run and shared by every test that loads one without asking for
# its own cache (the real SmolLM2 is 517 MiB as float32: one copy per test filled CI's disk).
_run_folder("COVE_GGUF_CACHE", "cove-gguf-")
os.environ.pop("HF_TOKEN", None)

# One compute thread per process (COVE_TEST_THREADS to change it): the suite runs on shared
# machines, where OpenMP threads spinning beside other work make every test slower. torch,
# numpy and pyarrow read these at import, so they are set before any test imports them, and
# the processes tests start (cove chat, the server) inherit them.
_THREADS = os.environ.get("COVE_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _THREADS
