"""pipeline() with models from a Hub (a live `cove serve`): default ids, revisions, tokens."""

from __future__ import annotations

import pytest
import transformers

from tests.pipelines.conftest import TEXTS
from tests.server.live import LiveServer, cove

DEFAULT_CLASSIFIER = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, folders):
    from cove.hub import HubApi

    data = tmp_path_factory.mktemp("pipelines-hub")
    cove("admin", "user", "create", "distilbert", data=data)
    token = cove("admin", "token", "create", "distilbert", "--role", "write", data=data)
    live = LiveServer(data).start()
    api = HubApi(endpoint=live.url, token=token)
    api.create_repo(DEFAULT_CLASSIFIER)
    api.upload_folder(repo_id=DEFAULT_CLASSIFIER, folder_path=str(folders["classifier"]))
    api.create_tag(DEFAULT_CLASSIFIER, tag="v1")
    api.create_repo("distilbert/private-mlm", private=True)
    api.upload_folder(repo_id="distilbert/private-mlm", folder_path=str(folders["mlm"]))
    live.token = token
    yield live
    live.stop()


def test_default_model_from_the_hub(hub, folders, monkeypatch):
    from cove import pipeline

    monkeypatch.setenv("COVE_ENDPOINT", hub.url)
    monkeypatch.delenv("COVE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reference = transformers.pipeline("text-classification", model=str(folders["classifier"]))
    want = reference(TEXTS)
    for p in (pipeline("sentiment-analysis"), pipeline("text-classification", revision="v1")):
        got = p(TEXTS, batch_size=4)
        assert [r["label"] for r in got] == [r["label"] for r in want]
        assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(got, want, strict=True))
    assert pipeline(model=DEFAULT_CLASSIFIER).task == "text-classification"
    filler = pipeline("fill-mask", model="distilbert/private-mlm", token=hub.token)
    assert len(filler("i [MASK] this movie")) == 5
    from cove.hub import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):  # private: not found without the token
        pipeline("fill-mask", model="distilbert/private-mlm", token=False)
