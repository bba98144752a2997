"""Suite-wide settings: offline, no telemetry, no Xet, a private HF cache."""

import os
import tempfile

# huggingface_hub reads these when it is imported: set them before any test imports it.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="cove-hf-home-"))
os.environ.pop("HF_TOKEN", None)
