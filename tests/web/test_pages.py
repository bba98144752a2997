"""The pages in headless Chromium: browse, search, read, sign in, create; and what stays hidden."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import expect

from tests.web.conftest import shot, sign_in


def test_search_and_filter_by_task(page):
    page.goto("/")
    page.get_by_label("Search models", exact=True).first.fill("tiny")
    page.get_by_label("Search models", exact=True).first.press("Enter")
    page.wait_for_url(re.compile(r"/models\?search=tiny"))
    results = page.locator(".results .repo-item")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("alice/tiny-model")
    page.goto("/models")
    expect(page.locator(".results .repo-item")).to_have_count(2)
    page.locator(".facets").get_by_role("link", name=re.compile("^text-generation")).click()
    page.wait_for_url(re.compile(r"pipeline_tag=text-generation"))
    expect(page.locator(".results .repo-item")).to_have_count(1)
    expect(page.locator(".results")).to_contain_text("alice/chatty-model")
    expect(page.locator(".facets a.on")).to_contain_text("text-generation")
    shot(page, "models-filtered")


def test_model_page_renders_the_card_safely(page):
    page.goto("/models")
    page.get_by_role("link", name="alice/tiny-model").click()
    page.wait_for_url("**/alice/tiny-model")
    card = page.locator(".markdown")
    expect(card.locator("h1")).to_have_text("Tiny model")
    expect(card.locator("table td").first).to_have_text("test")
    expect(card.locator("pre code .kn").first).to_have_text("from")  # highlighted Python
    chips = page.locator("ul.chips")
    for chip in ("text-classification", "transformers", "mit", "en", "tiny", "alice/tiny-data"):
        expect(chips).to_contain_text(chip)
    # The card's script, event handler and javascript: link are shown as text, never run.
    assert page.evaluate("window.__pwned") is None
    assert card.locator("script, img[onerror]").count() == 0
    # Relative links and images point into the repository, as on the Hub.
    expect(card.get_by_role("link", name="its config")).to_have_attribute(
        "href", "/alice/tiny-model/blob/main/config.json")
    logo = card.get_by_role("img", name="logo")
    expect(logo).to_have_attribute("src", "/alice/tiny-model/resolve/main/logo.png")
    assert logo.evaluate("img => img.decode().then(() => img.naturalWidth)") == 8
    expect(card).to_contain_text("<script>window.__pwned = true</script>")
    expect(card.get_by_text("click")).to_have_count(1)
    assert card.locator("a[href^='javascript']").count() == 0
    shot(page, "model-page")


def test_browse_files_and_open_them(page):
    page.goto("/alice/tiny-model")
    page.get_by_role("link", name="Files").click()
    page.wait_for_url("**/alice/tiny-model/tree/main")
    weights = page.locator("tr", has=page.get_by_role("link", name="model.safetensors", exact=True))
    expect(weights.locator(".badge.lfs")).to_have_text("LFS")
    expect(weights).to_contain_text("Add the model")  # its last commit, not the newest
    expect(weights.get_by_role("link", name="Raw model.safetensors")).to_have_attribute(
        "href", "/alice/tiny-model/resolve/main/model.safetensors")
    expect(page.locator("tr", has=page.get_by_role("link", name="config.json", exact=True))).to_contain_text(
        "Widen the model")
    shot(page, "tree")
    page.get_by_role("link", name="docs", exact=True).click()
    expect(page.get_by_role("link", name="notes.txt", exact=True)).to_be_visible()
    page.go_back()
    page.get_by_role("link", name="config.json", exact=True).click()
    page.wait_for_url("**/blob/main/config.json")
    expect(page.locator("pre.hl")).to_contain_text('"hidden_size": 4')
    expect(page.locator("pre.hl span").first).to_be_visible()
    raw = page.get_by_role("link", name="raw")
    assert httpx.get(page.url.split("/alice/")[0] + raw.get_attribute("href")).text == (
        '{"hidden_size": 4}\n')
    shot(page, "blob-text")
    page.goto("/alice/tiny-model/blob/main/model.safetensors")
    table = page.locator("table.tensors")
    expect(table).to_contain_text("embed.weight")
    expect(table).to_contain_text("[4, 2]")
    expect(page.locator("h2#tensors")).to_contain_text("2 tensors, 10 parameters")
    shot(page, "blob-safetensors")
    page.goto("/alice/tiny-model/blob/main/tiny.gguf")
    expect(page.locator("h2#tensors")).to_contain_text("GGUF header: 2 tensors, 18 parameters")
    expect(page.locator("table.tensors")).to_contain_text("tok_embd.weight")
    expect(page.locator("table.kv")).to_contain_text("general.architecture")
    page.goto("/alice/tiny-model/blob/main/evil.html")  # shown as text
    expect(page.locator("pre.hl")).to_contain_text("<script>document.title")
    page.goto("/alice/tiny-model/resolve/main/evil.html")  # opened raw: sandboxed
    assert page.title() == ""  # its script never ran
    assert page.evaluate("window.origin") == "null"  # nor could it reach the Hub's cookies
    page.goto("/alice/tiny-model/blob/main/logo.png")
    image = page.locator(".image img")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") == 8


def test_history_and_a_diff(page):
    page.goto("/alice/tiny-model/commits/main")
    titles = page.locator(".commits li strong")
    expect(titles).to_have_text(["Widen the model", "Add the model", "initial commit"])
    titles.first.click()
    page.wait_for_url(re.compile(r"/alice/tiny-model/commit/[0-9a-f]{40}$"))
    diff = page.locator("section.diff", has_text="config.json")
    expect(diff.locator(".gd", has_text='-{"hidden_size": 2}')).to_have_count(1)
    expect(diff.locator(".gi", has_text='+{"hidden_size": 4}')).to_have_count(1)
    shot(page, "commit-diff")


def test_dataset_viewer_pages_and_splits(page):
    page.goto("/datasets/alice/tiny-data")
    page.get_by_role("link", name="Viewer").click()
    rows = page.locator("table.rows tbody tr")
    expect(rows).to_have_count(100)
    expect(page.locator("table.rows thead")).to_contain_text("int64")
    expect(page.locator("table.rows thead")).to_contain_text("string")
    expect(page.get_by_text("rows 1–100 of 250")).to_be_visible()
    shot(page, "viewer")
    page.get_by_role("link", name="Next →").click()
    expect(rows.first).to_contain_text("row number 100")
    expect(page.get_by_text("rows 101–200 of 250")).to_be_visible()
    page.get_by_role("link", name="Next →").click()
    expect(rows).to_have_count(50)
    page.get_by_label("Split").select_option("test")  # cove.js submits on change
    page.wait_for_url(re.compile(r"split=test"))
    expect(rows).to_have_count(30)
    expect(rows.last).to_contain_text("test row 29")


def test_sign_in_create_a_token_and_a_repo(page, site):
    sign_in(page, "alice")
    expect(page.locator("[data-user]")).to_have_text("alice")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    assert page.goto("/settings/tokens").url.endswith("/login?next=/settings/tokens")
    sign_in(page, "alice")
    page.goto("/settings/tokens")
    page.get_by_label("Name").fill("laptop")
    page.get_by_label("Role").select_option("write")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token").input_value()
    assert token.startswith("hf_cove_")
    whoami = httpx.get(f"{site.url}/api/whoami-v2", headers={"authorization": f"Bearer {token}"})
    assert whoami.json()["name"] == "alice"
    shot(page, "token-created")
    page.goto("/settings/tokens")  # shown once: a later visit lists the token's name only
    expect(page.locator("#new-token")).to_have_count(0)
    assert token not in page.content()
    expect(page.locator("table.tokens")).to_contain_text("laptop")
    page.get_by_role("button", name="Revoke laptop").click()
    expect(page.locator("table.tokens")).not_to_contain_text("laptop")
    assert httpx.get(f"{site.url}/api/whoami-v2",
                     headers={"authorization": f"Bearer {token}"}).status_code == 401

    page.goto("/new")
    page.get_by_label("Model name").fill("fresh-model")
    page.get_by_label("Private").check()
    page.get_by_role("button", name="Create model").click()
    page.wait_for_url("**/alice/fresh-model")
    expect(page.locator(".repo-head .badge")).to_have_text("private")
    shot(page, "repo-created")
    info = httpx.get(f"{site.url}/api/models/alice/fresh-model",
                     headers={"authorization": f"Bearer {site.tokens['alice']}"})
    assert info.json()["private"] is True


PRIVATE_PAGES = ["/acme/org-secret", "/alice/secret-model", "/alice/secret-model/tree/main",
                 "/alice/secret-model/blob/main/secret.txt", "/alice/secret-model/commits/main",
                 "/alice/secret-model/settings", "/alice/secret-model/resolve/main/secret.txt"]


def _hidden_from(page) -> None:
    for path in PRIVATE_PAGES:
        assert page.goto(path).status == 404, path
    for listing in ("/models", "/models?search=secret", "/alice", "/acme", "/"):
        page.goto(listing)
        for hidden in ("secret-model", "org-secret"):
            assert hidden not in page.content(), (listing, hidden)


def test_private_repo_is_invisible_signed_out_and_to_others(page):
    _hidden_from(page)
    expect(page.locator("h1")).to_have_text("Models, datasets and apps, hosted here")
    sign_in(page, "bob")
    _hidden_from(page)
    page.goto("/alice/secret-model")
    shot(page, "private-as-bob")


def test_owner_sees_the_private_repo_and_its_settings(page):
    sign_in(page, "alice")
    page.goto("/alice")
    expect(page.get_by_role("link", name="alice/secret-model")).to_be_visible()
    # A session sees what the user's token sees: her organisation's private repository too.
    assert page.goto("/acme/org-secret").status == 200
    page.goto("/alice/secret-model/blob/main/secret.txt")
    expect(page.locator("pre.hl")).to_contain_text("classified")
    page.goto("/alice/chatty-model/settings")
    page.get_by_label("Private: only you").check()
    page.get_by_role("button", name="Save visibility").click()
    expect(page.locator(".repo-head .badge")).to_have_text("private")
    assert httpx.get(page.url.split("/alice/")[0] + "/api/models/alice/chatty-model").status_code == 404
    page.get_by_label("Type alice/chatty-model to confirm").fill("alice/wrong")
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".error")).to_contain_text("to confirm")
    page.get_by_label("Type alice/chatty-model to confirm").fill("alice/chatty-model")
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url("**/alice")
    assert page.goto("/alice/chatty-model").status == 404


def test_a_form_without_its_csrf_token_is_refused(page, site):
    page.goto("/login")
    refused = page.request.post("/login", form={"username": "alice",
                                                "password": "alice-secret-1"})
    assert refused.status == 403
    sign_in(page, "alice")
    for form in ({"name": "sneaky", "role": "write"},
                 {"name": "sneaky", "role": "write", "csrf_token": "forged"}):
        assert page.request.post("/settings/tokens", form=form).status == 403
    assert page.request.post("/new", form={"owner": "alice", "name": "sneaky"}).status == 403
    page.goto("/settings/tokens")
    expect(page.locator("table.tokens")).not_to_contain_text("sneaky")
    # The same request with the page's own token goes through.
    csrf = page.locator("input[name=csrf_token]").first.input_value()
    ok = page.request.post("/settings/tokens", form={"name": "fine", "role": "read",
                                                     "csrf_token": csrf})
    assert ok.status == 200 and "hf_cove_" in ok.text()


def test_join_signs_up_and_signs_in(page):
    page.goto("/join")
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Email").fill("carol@example.com")
    page.get_by_label("Password").fill("carol-pass-123")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/carol")
    expect(page.locator("[data-user]")).to_have_text("carol")
    shot(page, "joined")


def test_pages_fit_a_phone(browser, site):
    context = browser.new_context(base_url=site.url, viewport={"width": 390, "height": 844})
    phone = context.new_page()
    for path, name in (("/alice/tiny-model", "phone-model"), ("/models", "phone-models")):
        phone.goto(path)
        # No sideways scrolling: the layout folds to one column.
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        shot(phone, name)
    context.close()


def test_join_can_be_turned_off(tmp_path):
    from fastapi.testclient import TestClient

    from cove.server.app import create_app
    from cove.server.config import Settings

    client = TestClient(create_app(Settings(data_dir=tmp_path, serving=False,
                                            allow_join=False)))
    assert client.get("/join").status_code == 404
    page = client.get("/login")
    assert 'href="/join"' not in page.text
    csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    refused = client.post("/join", data={"username": "mallory", "password": "long-enough-1",
                                         "csrf_token": csrf})
    assert refused.status_code == 404


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter(el => el.type !== 'hidden')
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map(el => el.outerHTML)"""


def test_fields_are_labelled_and_landmarks_and_keys_work(page):
    sign_in(page, "alice")
    for path in ("/", "/models", "/settings/tokens", "/new", "/alice/tiny-model",
                 "/alice/tiny-model/settings", "/login", "/join",
                 "/datasets/alice/tiny-data/viewer", "/alice/tiny-model/tree/main"):
        page.goto(path)
        assert page.evaluate(UNLABELLED) == [], path
        for landmark in ("header", "nav", "main", "footer"):
            assert page.locator(landmark).count() >= 1, (path, landmark)
    page.goto("/models")
    page.keyboard.press("Tab")  # the first stop skips to the content
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.url.endswith("#main")
