"""Suite-wide settings: offline, no telemetry, no Xet, a private HF cache, one thread."""

import os
import tempfile

# huggingface_hub reads these when it is imported: set them before any test imports it.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="cove-hf-home-"))
os.environ.pop("HF_TOKEN", None)

# One compute thread per process (COVE_TEST_THREADS to change it): the suite runs on shared
# machines, where OpenMP threads spinning beside other work make every test slower. torch,
# numpy and pyarrow read these at import, so they are set before any test imports them, and
# the processes tests start (cove chat, the server) inherit them.
_THREADS = os.environ.get("COVE_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _THREADS
