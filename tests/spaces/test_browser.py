"""Space pages in headless Chromium (issue 18, Done when 1): a Gradio app answers inside the
page's frame, a Streamlit app renders its title, a static Space shows its index.html; the
listing shows each Space's SDK and stage; the owner sees the logs, pauses and resumes.

The Spaces are alice's, pushed with huggingface_hub once for the module, so they reuse the
gradio and streamlit environments of the session (tests/spaces/conftest.py). Chromium is
Debian's, as in tests/web; the screenshots go to a temporary folder, printed at the start.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi
from playwright.sync_api import expect

from cove.server.auth import set_password
from cove.server.config import Settings
from cove.server.hub import Hub
from tests.server.live import LiveServer, cove
from tests.spaces.conftest import push_space, wait_stage

# The web pages' browser (one per test file), launched with the flags the tests agree on.
from tests.web.conftest import artifacts, browser  # noqa: F401

SETTLED = {"RUNNING", "BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR", "NO_APP_FILE", "PAUSED"}
PASSWORD = "alice-secret-1"

REVERSE_APP = '''import gradio as gr


def reverse(text):
    return text[::-1]


gr.Interface(fn=reverse, inputs=gr.Textbox(label="Text"),
             outputs=gr.Textbox(label="Reversed"), api_name="reverse").launch()
'''
STREAMLIT_APP = '''import streamlit as st

st.title("Streamlit on Cove")
st.write("Rendered through the Hub's proxy.")
'''
INDEX = """<!doctype html>
<html><head><title>Plain page</title><link rel="stylesheet" href="style.css"></head>
<body><h1>Plain HTML on Cove</h1></body></html>
"""


@pytest.fixture(scope="module")
def spaces(api: HfApi, tmp_path_factory) -> dict[str, str]:
    """The three Spaces, running: sdk -> repo id."""
    tmp = tmp_path_factory.mktemp("browser-spaces")
    ids = {
        "gradio": push_space(api, "reverse", "gradio", {"app.py": REVERSE_APP}, tmp),
        "streamlit": push_space(api, "title", "streamlit", {"app.py": STREAMLIT_APP}, tmp),
        "static": push_space(api, "plain", "static",
                             {"index.html": INDEX, "style.css": "h1 { color: #0b57d0; }"}, tmp),
    }
    for repo_id in ids.values():  # pushed together: the two builds overlap
        runtime = wait_stage(api, repo_id, SETTLED, timeout=600)  # the session's first builds
        assert runtime["stage"] == "RUNNING", runtime
    return ids


@pytest.fixture(scope="module")
def owner_password(hub) -> str:
    """alice (made by the CLI without one) gets a password to sign in on the pages."""
    local = Hub(Settings(data_dir=hub.data))
    try:
        set_password(local, local.principal_for_token(hub.accounts.alice_write).account.id,
                     PASSWORD)
    finally:
        local.engine.dispose()
    return PASSWORD


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="cove-space-pages-"))
    print(f"screenshots in {folder}")
    return folder


@pytest.fixture
def page(browser, hub):  # noqa: F811 (the imported fixture)
    context = browser.new_context(base_url=hub.url, viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    yield tab
    context.close()


def sign_in(page, password: str) -> None:
    page.goto("/login")
    page.get_by_label("Username or email").fill("alice")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")


def test_gradio_app_answers_in_the_page(page, spaces, shots):
    page.goto(f"/spaces/{spaces['gradio']}")
    expect(page.locator("h1 .stage")).to_have_text("Running")
    expect(page.get_by_role("link", name="App", exact=True)).to_have_attribute("aria-current", "page")
    app = page.frame_locator("iframe.space-app")
    app.get_by_label("Text").fill("Cove runs Spaces")
    app.get_by_role("button", name="Submit").click()
    expect(app.get_by_label("Reversed")).to_have_value("secapS snur evoC", timeout=30_000)
    # Visitors see neither the owner's controls nor the logs.
    expect(page.get_by_role("button", name="Restart")).to_have_count(0)
    expect(page.locator("details.logs")).to_have_count(0)
    page.screenshot(path=str(shots / "gradio.png"))


def test_streamlit_app_renders_its_title(page, spaces, shots):
    page.goto(f"/spaces/{spaces['streamlit']}")
    app = page.frame_locator("iframe.space-app")
    # Streamlit draws the page from its websocket's messages: the title proves it flows.
    expect(app.get_by_role("heading", name="Streamlit on Cove")).to_be_visible(timeout=30_000)
    expect(app.get_by_text("Rendered through the Hub's proxy.")).to_be_visible()
    page.screenshot(path=str(shots / "streamlit.png"))


def test_static_space_shows_its_index(page, spaces, shots):
    page.goto(f"/spaces/{spaces['static']}")
    heading = page.frame_locator("iframe.space-app").get_by_role("heading")
    expect(heading).to_have_text("Plain HTML on Cove")
    expect(heading).to_have_css("color", "rgb(11, 87, 208)")  # its style.css, relative
    page.screenshot(path=str(shots / "static.png"))
    page.get_by_role("link", name="Files").click()
    expect(page.get_by_role("link", name="index.html", exact=True)).to_be_visible()


def test_listing_shows_sdk_and_stage(page, spaces, shots):
    page.goto("/spaces")
    for sdk, repo_id in spaces.items():
        card = page.locator(".repo-item",
                            has=page.get_by_role("link", name=repo_id, exact=True))
        expect(card.locator(".badge.sdk")).to_have_text(sdk)
        expect(card.locator(".stage")).to_have_text("Running")
    page.screenshot(path=str(shots / "listing.png"), full_page=True)


def test_owner_reads_the_logs_pauses_and_resumes(page, api, hub, spaces, owner_password,
                                                 shots):
    """Runs last: it pauses the Gradio Space, then resumes it from its cached environment
    while the page polls the runtime and shows the app again once it runs."""
    repo_id = spaces["gradio"]
    # A form without the session's CSRF token is refused.
    stray = httpx.post(f"{hub.url}/spaces/{repo_id}/runtime", data={"action": "pause"})
    assert stray.status_code == 403 and stray.headers["x-error-code"] == "CsrfFailed"
    sign_in(page, owner_password)
    page.goto(f"/spaces/{repo_id}")
    logs = page.locator("details.logs")
    logs.locator("> summary").click()
    expect(logs.locator("#space-logs")).to_contain_text("Running on local URL")
    expect(logs).to_contain_text("Starting the app.")  # the build log, folded inside
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("h1 .stage")).to_have_text("Paused")
    expect(page.get_by_role("status")).to_contain_text("This Space is paused")
    expect(page.locator("iframe.space-app")).to_have_count(0)
    page.screenshot(path=str(shots / "paused.png"))
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("h1 .stage")).to_have_text(re.compile("Building|Starting|Running"))
    runtime = wait_stage(api, repo_id, SETTLED, timeout=60)
    assert runtime["stage"] == "RUNNING", runtime
    # The page follows the runtime by itself (it polls every 2 s) until the app runs again.
    expect(page.locator("h1 .stage")).to_have_text("Running", timeout=10_000)
    app = page.frame_locator("iframe.space-app")
    app.get_by_label("Text").fill("abc")
    app.get_by_role("button", name="Submit").click()
    expect(app.get_by_label("Reversed")).to_have_value("cba", timeout=30_000)
    page.screenshot(path=str(shots / "resumed.png"))


def test_without_spaces_the_page_shows_the_card(tmp_path):
    """`cove serve --no-spaces` (COVE_SPACES=0): Space repositories stay readable, and their
    page is the card, as a model's; nothing is proxied."""
    cove("admin", "user", "create", "alice", data=tmp_path)
    token = cove("admin", "token", "create", "alice", "--role", "write", "--name", "t",
                 data=tmp_path)
    live = LiveServer(tmp_path, env={"COVE_SPACES": "0"}).start()
    try:
        api = HfApi(endpoint=live.url, token=token)
        push_space(api, "idle", "static", {"index.html": INDEX}, tmp_path / "push")
        page = httpx.get(f"{live.url}/spaces/alice/idle")
        assert page.status_code == 200
        assert "A test Space" in page.text and "space-app" not in page.text
        assert httpx.get(f"{live.url}/spaces/alice/idle/app/").status_code == 404
    finally:
        live.stop()
