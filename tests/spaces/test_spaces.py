"""Spaces end to end: pushed with huggingface_hub, built, run, proxied, restarted, isolated.

One live Hub for the module (tests/spaces/conftest.py); the gradio environment is built once
and every Gradio Space of alice's reuses it. The tests run in order: the last one restarts
the server and checks that the unchanged Space comes back without a pip install.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import websockets.sync.client
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from tests.spaces.conftest import GRADIO_APP, gradio_call, push_space, wait_stage


def logs(api: HfApi, repo_id: str, build: bool = False) -> str:
    """The Space's log as fetch_space_logs reads it (again if a busy machine made the
    client's 5-second read timeout pass before the first line)."""
    for _ in range(3):
        text = "".join(api.fetch_space_logs(repo_id, build=build))
        if text:
            return text
    return ""


SETTLED = {"RUNNING", "BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR", "NO_APP_FILE", "PAUSED"}

# A Space that reports what its process can see: files of the Hub and of another Space, its
# user, its environment. A plain HTTP server on Gradio's port (the gradio SDK's environment,
# no Gradio needed to answer).
PROBE_APP = '''import http.server
import json
import os
import sys


def read(path):
    try:
        with open(path, "rb") as f:
            f.read(1)
        return "read"
    except OSError as e:
        return type(e).__name__


def listing(path):
    try:
        os.listdir(path)
        return "listed"
    except OSError as e:
        return type(e).__name__


def write(folder):
    try:
        with open(os.path.join(folder, "planted.txt"), "w") as f:
            f.write("x")
        return "written"
    except OSError as e:
        return type(e).__name__


data = os.environ["DATA_DIR"]
checks = {
    "uid": os.getuid(),
    "cove_db": read(os.path.join(data, "cove.db")),
    "secret_key": read(os.path.join(data, "secret.key")),
    "data_dir": listing(data),
    "repos": listing(os.path.join(data, "repos")),
    "other_app": read(os.path.join(os.environ["OTHER_WORK"], "app.py")),
    "other_work": listing(os.environ["OTHER_WORK"]),
    "other_home": listing(os.environ["OTHER_HOME"]),
    "own_app": read("app.py"),
    "env_write": write(sys.prefix),
    "env": sorted(os.environ),
    "secret": os.environ.get("MY_SECRET"),
    "hf_token": os.environ.get("HF_TOKEN"),
    "space_id": os.environ.get("SPACE_ID"),
    "endpoint": os.environ.get("HF_ENDPOINT"),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(checks).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(
    ("127.0.0.1", int(os.environ["GRADIO_SERVER_PORT"])), Handler
).serve_forever()
'''

# An app that shows how the proxy relays answers: an event stream whose second event waits
# for a request to /release (so the first must pass alone), a forged Hub session cookie beside
# its own, a redirect to its own loopback origin, an empty answer with a length, HEAD.
RELAY_APP = '''import http.server
import os
import threading

port = int(os.environ["GRADIO_SERVER_PORT"])
release = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def chunk(self, data):
        self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.chunk(b"data: first\\n\\n")
            release.wait(60)
            self.chunk(b"data: second\\n\\n")
            self.wfile.write(b"0\\r\\n\\r\\n")
        elif self.path == "/release":
            release.set()
            self.answer(204)
        elif self.path == "/moved":
            self.answer(302, headers=[("Location", f"http://127.0.0.1:{port}/target?a=1")])
        else:
            self.answer(200, b"cookies", [("Set-Cookie", "cove_session=forged; Path=/"),
                                          ("Set-Cookie", "theme=dark; Path=/")])

    do_HEAD = do_GET


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''

# An app that never listens: stopped once the test Hub's start timeout (25 s) has passed.
NO_PORT_APP = "import time\nprint('warming up', flush=True)\nwhile True:\n    time.sleep(1)\n"

STREAMLIT_APP = '''import streamlit as st

st.title("Cove streamlit test")
st.write("hello from streamlit")
'''

BROKEN_REQUIREMENTS = "cove-no-such-package-anywhere==9.9.9\n"


@pytest.fixture(scope="module")
def pushed(api: HfApi, tmp_path_factory) -> None:
    """The Spaces that build, pushed together so that their builds overlap: alice/hello
    (gradio), alice/no-port (its start timeout runs out meanwhile), alice/broken-build and
    alice/streamlit-app. Each test waits for its own."""
    tmp = tmp_path_factory.mktemp("pushed")
    push_space(api, "hello", "gradio", {"app.py": GRADIO_APP}, tmp)
    push_space(api, "no-port", "gradio", {"app.py": NO_PORT_APP}, tmp)
    push_space(api, "broken-build", "gradio",
               {"app.py": GRADIO_APP, "requirements.txt": BROKEN_REQUIREMENTS}, tmp)
    push_space(api, "streamlit-app", "streamlit", {"app.py": STREAMLIT_APP}, tmp)


@pytest.fixture(scope="module")
def gradio_space(api: HfApi, pushed) -> str:
    """alice/hello, running."""
    runtime = wait_stage(api, "alice/hello", SETTLED)
    assert runtime["stage"] == "RUNNING", runtime
    return "alice/hello"


def test_static_space_serves_its_index(api, hub, tmp_path):
    repo_id = push_space(api, "site", "static", {"index.html": "<h1>Static hello</h1>",
                                                 "css/site.css": "h1 {color: red}"}, tmp_path)
    assert wait_stage(api, repo_id, SETTLED, timeout=10)["stage"] == "RUNNING"
    page = httpx.get(f"{hub.url}/spaces/{repo_id}/app/")
    assert page.status_code == 200 and "<h1>Static hello</h1>" in page.text
    assert page.headers["content-type"].startswith("text/html")
    css = httpx.get(f"{hub.url}/spaces/{repo_id}/app/css/site.css")
    assert css.text == "h1 {color: red}" and css.headers["content-type"].startswith("text/css")
    assert httpx.get(f"{hub.url}/spaces/{repo_id}/app/missing.html").status_code == 404
    # The prefix without its slash leads to it, so that relative links resolve.
    bare = httpx.get(f"{hub.url}/spaces/{repo_id}/app", follow_redirects=False)
    assert bare.status_code == 307 and bare.headers["location"].endswith(f"/{repo_id}/app/")


def test_gradio_space_answers_through_the_proxy(api, hub, gradio_space):
    info = api.space_info(gradio_space)
    assert info.runtime.stage == "RUNNING" and info.sdk == "gradio"
    assert info.runtime.hardware == "cpu-basic"
    assert gradio_call(f"{hub.url}/spaces/{gradio_space}/app", "greet", "Bob") == ["Hello Bob!"]
    page = httpx.get(f"{hub.url}/spaces/{gradio_space}/app/")
    assert page.status_code == 200 and "gradio" in page.text.lower()
    build = logs(api, gradio_space, build=True)
    # Built here, or by another test module of the session with the same requirements.
    assert "Successfully installed" in build or "Using the cached environment" in build
    assert "Starting the app." in build
    assert "Running on local URL" in logs(api, gradio_space)


def test_push_restarts_the_space_with_the_new_code(api, hub, gradio_space):
    info = api.upload_file(
        path_or_fileobj=GRADIO_APP.replace('f"Hello {name}!"', 'f"Good day, {name}."').encode(),
        path_in_repo="app.py", repo_id=gradio_space, repo_type="space",
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runtime = api.get_space_runtime(gradio_space).raw
        if runtime["sha"] == info.oid and runtime["stage"] in SETTLED:
            break
        time.sleep(0.3)
    assert runtime["stage"] == "RUNNING" and runtime["sha"] == info.oid, runtime
    assert gradio_call(f"{hub.url}/spaces/{gradio_space}/app", "greet", "Bob") == [
        "Good day, Bob."
    ]
    # Same requirements: the environment was reused, nothing installed.
    build = logs(api, gradio_space, build=True)
    assert "Using the cached environment" in build and "Installing" not in build


def test_failing_requirements_show_build_error_with_pip_log(api, pushed):
    repo_id = "alice/broken-build"
    runtime = wait_stage(api, repo_id, SETTLED)
    assert runtime["stage"] == "BUILD_ERROR", runtime
    assert "pip install failed" in runtime["errorMessage"]
    build = logs(api, repo_id, build=True)
    assert "cove-no-such-package-anywhere" in build
    assert "No matching distribution found" in build or "Could not find a version" in build


def test_crashing_app_shows_runtime_error_with_traceback(api, gradio_space, tmp_path):
    app = 'def load():\n    raise ValueError("the weights file is missing")\n\n\nload()\n'
    repo_id = push_space(api, "crashes", "gradio", {"app.py": app}, tmp_path)
    runtime = wait_stage(api, repo_id, {"RUNTIME_ERROR", "BUILD_ERROR", "RUNNING"})
    assert runtime["stage"] == "RUNTIME_ERROR", runtime
    assert "ValueError: the weights file is missing" in runtime["errorMessage"]
    assert "Exit code: 1" in runtime["errorMessage"]
    run = logs(api, repo_id)
    assert "Traceback (most recent call last)" in run and 'line 2, in load' in run


def test_app_that_never_opens_its_port_is_stopped(api, pushed):
    repo_id = "alice/no-port"
    runtime = wait_stage(api, repo_id, {"RUNTIME_ERROR", "RUNNING"}, timeout=120)
    assert runtime["stage"] == "RUNTIME_ERROR", runtime
    assert "did not open its port within 25 s" in runtime["errorMessage"]
    assert "warming up" in logs(api, repo_id)


def test_space_sees_only_its_own_files_and_secrets(api, hub, gradio_space, spaces_dir,
                                                   tmp_path):
    other_id = httpx.get(f"{hub.url}/api/spaces/{gradio_space}").json()["_id"]  # the row id
    api.add_space_secret(gradio_space, "OTHER_SECRET", "not-for-the-probe")
    repo_id = "alice/probe"
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio")
    api.add_space_secret(repo_id, "MY_SECRET", "probe-secret")
    api.add_space_variable(repo_id, "DATA_DIR", str(hub.data))
    api.add_space_variable(repo_id, "OTHER_WORK", str(spaces_dir / "work" / other_id))
    api.add_space_variable(repo_id, "OTHER_HOME", str(spaces_dir / "home" / other_id))
    push_space(api, "probe", "gradio", {"app.py": PROBE_APP}, tmp_path)
    runtime = wait_stage(api, repo_id, SETTLED)
    assert runtime["stage"] == "RUNNING", (runtime, logs(api, repo_id))
    checks = httpx.get(f"{hub.url}/spaces/{repo_id}/app/", timeout=10).json()
    assert checks["uid"] != 0
    # The Hub's data: neither its database nor its key, nor a listing of its folders.
    assert checks["cove_db"] == "PermissionError"
    assert checks["secret_key"] == "PermissionError"
    assert checks["data_dir"] == "PermissionError"
    assert checks["repos"] == "PermissionError"
    # Another Space's working copy and home are closed; its own copy is readable.
    assert checks["other_app"] == "PermissionError"
    assert checks["other_work"] == "PermissionError"
    assert checks["other_home"] == "PermissionError"
    assert checks["own_app"] == "read"
    assert checks["env_write"] == "PermissionError"  # the shared environment is read-only
    # Its own secret and variables, the Space's facts, nothing of the server's environment.
    assert checks["secret"] == "probe-secret"
    assert "OTHER_SECRET" not in checks["env"]
    assert checks["hf_token"] is None
    assert not [k for k in checks["env"] if k.startswith(("COVE_", "PIP_", "HF_HUB_"))]
    assert checks["space_id"] == repo_id and checks["endpoint"].startswith("http://127.0.0.1:")
    # Secrets are never answered back; variables are.
    secrets = httpx.get(f"{hub.url}/api/spaces/{repo_id}/secrets",
                        headers={"authorization": f"Bearer {hub.accounts.alice_write}"}).json()
    assert secrets["MY_SECRET"]["updatedAt"] and "value" not in secrets["MY_SECRET"]
    assert api.get_space_variables(repo_id)["DATA_DIR"].value == str(hub.data)


def test_proxy_relays_events_as_they_come_and_guards_the_hub_cookie(api, hub, gradio_space,
                                                                     tmp_path):
    repo_id = "alice/relay"
    push_space(api, "relay", "gradio", {"app.py": RELAY_APP}, tmp_path)
    runtime = wait_stage(api, repo_id, SETTLED)
    assert runtime["stage"] == "RUNNING", (runtime, logs(api, repo_id))
    base = f"{hub.url}/spaces/{repo_id}/app"
    with httpx.Client(timeout=30) as client, client.stream("GET", f"{base}/events") as events:
        lines = events.iter_lines()
        # The first event passes while the app holds the second back until /release.
        assert next(lines) == "data: first"
        assert client.get(f"{base}/release").status_code == 204
        assert [line for line in lines if line] == ["data: second"]
    page = httpx.get(f"{base}/page")
    assert page.text == "cookies" and page.headers.get_list("set-cookie") == [
        "theme=dark; Path=/"]
    # One Date and one Server header: the Hub's, not the app's beside them.
    assert len(page.headers.get_list("date")) == len(page.headers.get_list("server")) == 1
    moved = httpx.get(f"{base}/moved", follow_redirects=False)
    assert moved.status_code == 302 and moved.headers["location"] == (
        f"/spaces/{repo_id}/app/target?a=1")
    head = httpx.head(f"{base}/page")
    assert head.status_code == 200 and head.headers["content-length"] == "7"
    assert head.content == b""


def test_owner_actions_and_access(api, hub, gradio_space):
    bob = HfApi(endpoint=hub.url, token=hub.accounts.bob_write)
    with pytest.raises(HfHubHTTPError) as e:
        bob.restart_space(gradio_space)
    assert e.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError):
        bob.add_space_secret(gradio_space, "X", "y")
    assert api.pause_space(gradio_space).stage == "PAUSED"
    # A paused Space stays down when visited.
    assert httpx.get(f"{hub.url}/spaces/{gradio_space}/app/").status_code == 503
    assert api.get_space_runtime(gradio_space).stage == "PAUSED"
    api.restart_space(gradio_space)
    assert wait_stage(api, gradio_space, SETTLED)["stage"] == "RUNNING"
    # Idle past its sleep time it sleeps; the next visit wakes it.
    assert api.set_space_sleep_time(gradio_space, 1).sleep_time == 1
    wait_stage(api, gradio_space, {"SLEEPING"}, timeout=30)
    assert gradio_call(f"{hub.url}/spaces/{gradio_space}/app", "greet", "Ann") == [
        "Good day, Ann."
    ]
    api.set_space_sleep_time(gradio_space, 3600)


def test_private_space_is_hidden_and_hub_credentials_stay_home(api, hub, tmp_path):
    echo = GRADIO_APP.replace(
        'gr.Interface(fn=greet, inputs="text", outputs="text", api_name="greet").launch()',
        'def headers(request: gr.Request):\n'
        '    return json.dumps(dict(request.headers))\n\n\n'
        'with gr.Blocks() as demo:\n'
        '    gr.Button().click(headers, None, gr.Textbox(), api_name="headers")\n'
        'demo.launch()\n',
    ).replace("import gradio as gr", "import json\n\nimport gradio as gr")
    repo_id = "alice/private-echo"
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=True)
    push_space(api, "private-echo", "gradio", {"app.py": echo}, tmp_path)
    assert wait_stage(api, repo_id, SETTLED)["stage"] == "RUNNING"
    base = f"{hub.url}/spaces/{repo_id}/app"
    assert httpx.get(f"{base}/").status_code == 404
    bob = {"authorization": f"Bearer {hub.accounts.bob_write}"}
    assert httpx.get(f"{base}/", headers=bob).status_code == 404
    alice = {"authorization": f"Bearer {hub.accounts.alice_write}",
             "cookie": "cove_session=hub-secret; theme=dark"}
    (raw,) = gradio_call(base, "headers", headers=alice)
    seen = json.loads(raw)
    assert "authorization" not in seen
    assert seen.get("cookie") == "theme=dark"
    assert seen["x-forwarded-prefix"] == f"/spaces/{repo_id}/app"
    assert seen["x-forwarded-host"] == hub.url.removeprefix("http://")


def test_streamlit_space_runs_behind_the_proxy(api, hub, pushed):
    repo_id = "alice/streamlit-app"
    runtime = wait_stage(api, repo_id, SETTLED)
    assert runtime["stage"] == "RUNNING", runtime
    base = f"{hub.url}/spaces/{repo_id}/app"
    assert httpx.get(f"{base}/_stcore/health").text == "ok"
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and "<title>Streamlit</title>" in page.text
    # Its websocket, through the proxy: the app answers the browser's first message.
    ws_url = base.replace("http://", "ws://") + "/_stcore/stream"
    with websockets.sync.client.connect(ws_url, subprotocols=["streamlit"],
                                        open_timeout=10) as ws:
        assert ws.subprotocol == "streamlit"


def test_unchanged_space_comes_back_from_the_cache_after_a_server_restart(api, hub,
                                                                           gradio_space):
    hub.stop()
    hub.start()
    # Spaces start lazily: asleep until the first visit.
    assert api.get_space_runtime(gradio_space).stage == "SLEEPING"
    started = time.monotonic()
    assert gradio_call(f"{hub.url}/spaces/{gradio_space}/app", "greet", "Eve") == [
        "Good day, Eve."
    ]
    seconds = time.monotonic() - started
    build = logs(api, gradio_space, build=True)
    assert "Using the cached environment" in build and "Installing" not in build
    print(f"\nrebuild of an unchanged Space after a server restart: {seconds:.1f} s")
