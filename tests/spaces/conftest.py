"""One live Hub for the Spaces tests, with Spaces in a folder other users may traverse.

pytest's own temporary folders (/tmp/pytest-of-root/...) are mode 0700, closed to the Spaces'
users, so the Spaces folder is made with tempfile under /tmp (mode 0711). It lives for the
whole session: the environments built there (gradio, streamlit) are built once and reused by
every test, as an unchanged Space reuses its environment on a real Hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi

from tests.server.conftest import seed_accounts
from tests.server.live import LiveServer

GRADIO_APP = '''import gradio as gr


def greet(name):
    return f"Hello {name}!"


gr.Interface(fn=greet, inputs="text", outputs="text", api_name="greet").launch()
'''


@pytest.fixture(scope="session")
def spaces_dir():
    path = Path(tempfile.mkdtemp(prefix="cove-spaces-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    # Removed in the background: the environments are about a gigabyte of small files, which
    # a busy disk takes most of a minute to delete, and nothing waits for them.
    subprocess.Popen(["rm", "-rf", str(path)], start_new_session=True)


@pytest.fixture(scope="session")
def hub(tmp_path_factory, spaces_dir) -> LiveServer:
    """The live server (`.url`, `.accounts`); alice owns the test Spaces."""
    data = tmp_path_factory.mktemp("spaces-hub")
    # Each pytest-xdist worker's Hub numbers its repositories from 1: distinct Space users.
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    live = LiveServer(data, env={"COVE_SPACES_DIR": str(spaces_dir),
                                 "COVE_SPACES_UID_BASE": str(200_000 + 10_000 * worker),
                                 "COVE_SPACES_START_TIMEOUT": "25"})
    live.accounts = seed_accounts(data)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="session")
def api(hub) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.accounts.alice_write)


def readme(sdk: str, **extra: str) -> str:
    lines = "".join(f"{k}: {v}\n" for k, v in extra.items())
    return f"---\ntitle: test\nsdk: {sdk}\n{lines}---\n# A test Space\n"


def push_space(api: HfApi, name: str, sdk: str, files: dict[str, str], tmp: Path) -> str:
    """Create alice's Space `name` and upload `files` (README.md added) in one commit."""
    repo_id = f"alice/{name}"
    api.create_repo(repo_id, repo_type="space", space_sdk=sdk, exist_ok=True)
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in {"README.md": readme(sdk), **files}.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder)
    return repo_id


def wait_stage(api: HfApi, repo_id: str, stages: set[str], timeout: float = 240) -> dict:
    """Poll the runtime until its stage is one of `stages`; the raw runtime JSON."""
    deadline = time.monotonic() + timeout
    runtime = None
    while time.monotonic() < deadline:
        runtime = api.get_space_runtime(repo_id)
        if runtime.stage in stages:
            return runtime.raw
        time.sleep(0.5)
    logs = "".join(api.fetch_space_logs(repo_id, build=True))
    raise AssertionError(f"{repo_id} stayed {runtime and runtime.stage}, not {stages}; "
                         f"build log:\n{logs}")


def gradio_call(base: str, fn: str, *args, headers: dict | None = None) -> list:
    """Call a Gradio app's function through its REST API (/gradio_api/call, SSE answer)."""
    with httpx.Client(base_url=base, timeout=60, headers=headers) as client:
        r = client.post(f"/gradio_api/call/{fn}", json={"data": list(args)})
        r.raise_for_status()
        event_id = r.json()["event_id"]
        with client.stream("GET", f"/gradio_api/call/{fn}/{event_id}") as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = json.loads(line[5:].strip())
                    if event == "error":
                        raise AssertionError(f"the app failed: {data}")
                    return data
    raise AssertionError("the Gradio call ended without an answer")
