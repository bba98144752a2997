"""AutoTokenizer from a Hub repository (a live `cove serve`), online, pinned and offline."""

from __future__ import annotations

import pytest

from tests.server.live import LiveServer, cove
from tests.tokenizers.conftest import TEXTS


@pytest.fixture(scope="module")
def hub(tmp_path_factory, fixtures):
    from cove.hub import HubApi

    data = tmp_path_factory.mktemp("tok-hub")
    cove("admin", "user", "create", "alice", data=data)
    token = cove("admin", "token", "create", "alice", "--role", "write", data=data)
    live = LiveServer(data).start()
    api = HubApi(endpoint=live.url, token=token)
    for repo, kind, private in [("alice/tiny-bert", "bert", False),
                                ("alice/minilm", "minilm", True),
                                ("alice/tiny-roberta", "roberta", False)]:
        api.create_repo(repo, private=private)
        api.upload_folder(repo_id=repo, folder_path=str(fixtures[kind]))
    api.create_tag("alice/tiny-bert", tag="v1")
    templates = tmp_path_factory.mktemp("templates")
    (templates / "chat_template.jinja").write_text("{{ messages[0].content }}")
    (templates / "additional_chat_templates").mkdir()
    (templates / "additional_chat_templates" / "shout.jinja").write_text(
        "{{ messages[0].content | upper }}")
    api.upload_folder(repo_id="alice/tiny-roberta", folder_path=str(templates))
    live.token = token
    yield live
    live.stop()


def test_load_from_hub(hub, pair, tmp_path, monkeypatch):
    from cove.hub import RepositoryNotFoundError
    from cove.tokenizers import AutoTokenizer

    monkeypatch.setenv("COVE_ENDPOINT", hub.url)
    monkeypatch.delenv("COVE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cache = tmp_path / "cache"
    for repo, kind, options in [("alice/tiny-bert", "bert", dict(revision="v1")),
                                ("alice/minilm", "minilm", dict(token=hub.token)),
                                ("alice/tiny-roberta", "roberta", dict())]:
        hf, _ = pair(kind)
        tokenizer = AutoTokenizer.from_pretrained(repo, cache_dir=cache, **options)
        assert type(tokenizer).__name__ == type(hf).__name__
        assert tokenizer.name_or_path == repo
        assert dict(tokenizer(TEXTS[:50], return_offsets_mapping=True)) == \
            dict(hf(TEXTS[:50], return_offsets_mapping=True))
        # again, from the cache only
        offline = AutoTokenizer.from_pretrained(repo, cache_dir=cache, local_files_only=True,
                                                **options)
        assert offline.encode(TEXTS[7]) == hf.encode(TEXTS[7])
        assert offline.chat_template == tokenizer.chat_template
    chat = [{"role": "user", "content": "hi"}]
    assert tokenizer.chat_template == {"default": "{{ messages[0].content }}",
                                       "shout": "{{ messages[0].content | upper }}"}
    assert tokenizer.apply_chat_template(chat, tokenize=False) == "hi"
    assert tokenizer.apply_chat_template(chat, tokenize=False, chat_template="shout") == "HI"
    with pytest.raises(RepositoryNotFoundError):
        AutoTokenizer.from_pretrained("alice/minilm", cache_dir=tmp_path / "other")
    with pytest.raises(OSError, match="not in the local cache|could not be checked"):
        AutoTokenizer.from_pretrained("alice/tiny-bert", cache_dir=tmp_path / "empty",
                                      local_files_only=True)
