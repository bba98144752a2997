"""The inference widget of the model pages, in headless Chromium, on the demo content.

A `cove serve` with the demo on (as `make serve` runs it) on an empty data folder: the models
list shows the demo models; the chat widget on SmolLM2 streams its reply into the live region;
the similarity widget on all-MiniLM-L6-v2 shows the pipeline's scores. A private copy of
MiniLM is alice's: its page, files and widget endpoint are 404 signed out and for bob, and its
widget runs for alice through her session cookie, which the serving endpoints take only with
the page's CSRF token (X-CSRF-Token).
"""

from __future__ import annotations

import math
import shutil

import pytest
from playwright.sync_api import expect

from cove.server import demo
from tests.server.live import LiveServer
from tests.server.test_demo import MINILM, SMOLLM2, _sources
from tests.web.conftest import ARTIFACTS, _seed, shot, sign_in

PRIVATE = "alice/private-minilm"
SOURCE = "That is a happy person"
WAIT = 120_000  # ms: a model's first call loads it, on a busy machine too
SENTENCES = ["That is a happy dog", "That is a very happy person", "Today is a sunny day"]


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory):
    """A first start with the demo import, the users of the page tests, and alice's private
    copy of MiniLM."""
    from huggingface_hub import HfApi

    env = _sources()
    data = tmp_path_factory.mktemp("widget-hub")
    tokens = _seed(data)  # accounts only: the folder has no repositories, so the demo imports
    live = LiveServer(data, demo=True, env=env).start(timeout=180)
    live.tokens = tokens
    try:
        api = HfApi(endpoint=live.url, token=tokens["alice"])
        api.create_repo(PRIVATE, private=True)
        api.upload_folder(repo_id=PRIVATE, folder_path=str(demo.minilm_dir()),
                          ignore_patterns=["README.md", ".gitattributes"])
        yield live
    finally:
        live.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def tab(browser, demo_site):
    context = browser.new_context(base_url=demo_site.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT)
    yield page
    context.close()


def _run_widget(page) -> None:
    page.get_by_role("button", name="Send").click()
    expect(page.locator("[data-output]")).to_have_attribute("aria-busy", "false", timeout=WAIT)


def _scores(page) -> dict[str, float]:
    rows = page.locator("[data-output] table tbody tr")
    expect(rows).to_have_count(len(SENTENCES))
    return {r.locator("td").nth(0).inner_text(): float(r.locator("td").nth(1).inner_text())
            for r in rows.all()}


def _pipeline_scores() -> dict[str, float]:
    import cove

    pipe = cove.pipeline("sentence-similarity", model=str(demo.minilm_dir()))
    source, *others = pipe([SOURCE, *SENTENCES])

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
            sum(x * x for x in a) * sum(y * y for y in b))

    return {s: cosine(list(map(float, source)), list(map(float, v)))
            for s, v in zip(SENTENCES, others, strict=True)}


def test_the_demo_models_are_listed(tab):
    tab.goto("/models")
    results = tab.locator(".results")
    expect(results.get_by_role("link", name=SMOLLM2)).to_be_visible()
    expect(results.get_by_role("link", name=MINILM)).to_be_visible()
    expect(results).not_to_contain_text(PRIVATE)  # alice's private copy is hers alone
    shot(tab, "widget-demo-models")


def test_chat_reply_streams_into_the_live_region(tab):
    tab.goto(f"/{SMOLLM2}")
    widget = tab.locator("[data-widget]")
    expect(widget.get_by_role("heading")).to_have_text("Try it: Chat")
    output = widget.locator("[data-output]")
    expect(output).to_have_attribute("aria-live", "polite")
    # Every change of the live region while it is busy: (reply length, aria-busy).
    tab.evaluate("""() => {
        const out = document.querySelector('[data-output]');
        window.__seen = [];
        new MutationObserver(() => {
            const reply = out.querySelector('.turn.assistant:last-of-type');
            window.__seen.push([reply ? reply.textContent.length : 0,
                                out.getAttribute('aria-busy')]);
        }).observe(out, {subtree: true, childList: true, characterData: true,
                         attributes: true});
    }""")
    message = widget.get_by_label("Message")
    message.fill("What is the capital of France?")
    message.press("Enter")  # the keyboard sends
    expect(output).to_have_attribute("aria-busy", "true")
    expect(output).to_have_attribute("aria-busy", "false", timeout=WAIT)
    reply = output.locator(".turn.assistant").last.inner_text()
    assert reply.strip(), "empty reply"
    assert "Paris" in reply
    while_busy = {n for n, busy in tab.evaluate("window.__seen") if busy == "true" and n}
    assert len(while_busy) >= 3, f"the reply did not stream in: lengths seen {while_busy}"
    assert max(while_busy) <= len(reply)
    expect(output.locator(".turn.user")).to_have_text("What is the capital of France?")
    shot(tab, "widget-chat")
    widget.screenshot(path=str(ARTIFACTS / "widget-chat-widget.png"))
    # The conversation goes on: the second turn sees the first.
    message.fill("And of Italy?")
    widget.get_by_role("button", name="Send").click()
    expect(output.locator(".turn.assistant")).to_have_count(2, timeout=WAIT)
    expect(output).to_have_attribute("aria-busy", "false", timeout=WAIT)
    assert output.locator(".turn.assistant").last.inner_text().strip()


def test_similarity_scores_equal_the_pipeline(tab):
    tab.goto(f"/{MINILM}")
    widget = tab.locator("[data-widget]")
    expect(widget.get_by_role("heading")).to_have_text("Try it: Sentence similarity")
    widget.get_by_label("Source sentence").fill(SOURCE)
    widget.get_by_label("Sentences to compare, one per line").fill("\n".join(SENTENCES))
    _run_widget(tab)
    shown = _scores(tab)
    expected = _pipeline_scores()
    assert shown.keys() == expected.keys()
    for sentence, score in expected.items():
        assert abs(shown[sentence] - score) <= 5e-4 + 1e-6, (sentence, shown[sentence], score)
    assert max(shown, key=shown.get) == "That is a very happy person"
    shot(tab, "widget-similarity")


def _csrf(page) -> str:
    """The session's CSRF token, as the page's forms carry it."""
    return page.locator("input[name=csrf_token]").first.get_attribute("value")


BODY = {"inputs": {"source_sentence": SOURCE, "sentences": SENTENCES[:1]}}


@pytest.mark.parametrize("user", [None, "bob"])
def test_a_private_model_is_invisible_to_others(tab, user):
    if user:
        sign_in(tab, user)
    assert tab.goto(f"/{PRIVATE}").status == 404
    expect(tab.locator("[data-widget]")).to_have_count(0)
    shot(tab, f"widget-private-{user or 'signed-out'}")
    for path in (f"/{PRIVATE}/tree/main", f"/{PRIVATE}/blob/main/config.json",
                 f"/{PRIVATE}/resolve/main/config.json", f"/api/models/{PRIVATE}"):
        assert tab.goto(path).status == 404, path
    tab.goto("/models?search=private")
    expect(tab.locator(".results .repo-item")).to_have_count(0)
    # The widget's endpoints, from the page's origin with the session's cookie and CSRF token.
    tab.goto("/models" if user else "/login")  # a page with a form: the CSRF token
    headers = {"X-CSRF-Token": _csrf(tab)}
    r = tab.request.post(f"/models/{PRIVATE}", data=BODY, headers=headers)
    assert r.status == 404, r.text()
    r = tab.request.post("/v1/embeddings", data={"model": PRIVATE, "input": "x"},
                         headers=headers)
    assert r.status == 404, r.text()


def test_the_owner_runs_the_private_widget_and_csrf_is_required(tab, demo_site):
    sign_in(tab, "alice")
    tab.goto(f"/{PRIVATE}")
    widget = tab.locator("[data-widget]")
    expect(widget.get_by_role("heading")).to_have_text("Try it: Sentence similarity")
    _run_widget(tab)
    assert len(_scores(tab)) == len(SENTENCES)
    shot(tab, "widget-private-owner")
    csrf = widget.get_attribute("data-csrf")
    assert csrf == _csrf(tab)
    # The signed-in cookie alone, or with a wrong token, is refused before anything runs.
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        for url, body in ((f"/models/{PRIVATE}", BODY),
                          (f"/models/{MINILM}", BODY),
                          ("/v1/chat/completions", {"model": SMOLLM2, "max_tokens": 1,
                                                    "messages": [{"role": "user",
                                                                  "content": "hi"}]})):
            r = tab.request.post(url, data=body, headers=headers)
            assert r.status == 403, (url, headers, r.status, r.text())
            assert r.headers["x-error-code"] == "CsrfFailed"
    r = tab.request.post(f"/models/{PRIVATE}", data=BODY, headers={"X-CSRF-Token": csrf})
    assert r.status == 200, r.text()
    assert len(r.json()) == 1
    # A GET with the cookie alone is anonymous, not refused.
    assert tab.request.get("/v1/models").status == 200
    # A bearer token wins over the cookie: bob's token with alice's session reads as bob.
    bob = {"Authorization": f"Bearer {demo_site.tokens['bob']}", "X-CSRF-Token": csrf}
    assert tab.request.post(f"/models/{PRIVATE}", data=BODY, headers=bob).status == 404


# -- the other tasks, on tiny random models ----------------------------------------------------
TASK_MODELS = {  # repo name -> (pipeline tag, what the widget shows)
    "tiny-classifier": ("text-classification", "table"),
    "tiny-ner": ("token-classification", "any"),
    "tiny-mlm": ("fill-mask", "table"),
    "tiny-qa": ("question-answering", "table"),
    "tiny-nli": ("zero-shot-classification", "table"),
    "tiny-base": ("feature-extraction", "pre"),
}


@pytest.fixture(scope="module")
def task_models(demo_site, tmp_path_factory):
    """Tiny random BERTs with the serving tests' heads, each with its card's pipeline_tag."""
    import transformers
    from huggingface_hub import HfApi

    from tests.pipelines.conftest import NER_LABELS
    from tests.server.serving.test_tasks import LABELS, NLI, bert

    root = tmp_path_factory.mktemp("widget-tasks")
    heads = {"tiny-classifier": (transformers.BertForSequenceClassification, LABELS),
             "tiny-ner": (transformers.BertForTokenClassification, NER_LABELS),
             "tiny-mlm": (transformers.BertForMaskedLM, None),
             "tiny-qa": (transformers.BertForQuestionAnswering, None),
             "tiny-nli": (transformers.BertForSequenceClassification, NLI),
             "tiny-base": (transformers.BertModel, None)}
    api = HfApi(endpoint=demo_site.url, token=demo_site.tokens["alice"])
    for i, (name, (head, labels)) in enumerate(heads.items()):
        folder = bert(root / name, head, i, TASK_MODELS[name][0], labels)
        api.create_repo(f"alice/{name}")
        api.upload_folder(repo_id=f"alice/{name}", folder_path=str(folder))
    return TASK_MODELS


@pytest.mark.parametrize("name", list(TASK_MODELS))
def test_each_task_widget_shows_its_result(tab, task_models, name):
    task, shows = task_models[name]
    tab.goto(f"/alice/{name}")
    widget = tab.locator("[data-widget]")
    expect(widget).to_have_attribute("data-task", task)
    widget.get_by_role("button", name="Send").click()
    output = widget.locator("[data-output]")
    expect(output.locator("table, pre, p")).not_to_have_count(0, timeout=WAIT)
    expect(output).to_have_attribute("aria-busy", "false", timeout=WAIT)
    assert output.locator(".widget-error").count() == 0, output.inner_text()
    if shows == "table":
        assert output.locator("table tbody tr").count() >= 1
    elif shows == "pre":
        expect(output).to_contain_text("token vectors of 32 dimensions")
    shot(tab, f"widget-{task}")
