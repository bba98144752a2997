from cove.server.cards import CardError, card_facts, front_matter


def test_front_matter_parsed_and_absent():
    assert front_matter("---\nlicense: mit\n---\n# Title") == {"license": "mit"}
    assert front_matter("# No metadata") is None
    assert front_matter("---\n---\ntext") == {}


def test_front_matter_errors_are_specific():
    for bad in ("---\nkey: [unclosed\n---\n", "---\n- a list\n---\n"):
        try:
            front_matter(bad)
        except CardError as e:
            assert "README.md metadata" in str(e) or "YAML" in str(e)
        else:
            raise AssertionError(f"accepted {bad!r}")


def test_card_facts_derive_tags_like_the_hub():
    readme = (
        b"---\nlicense: apache-2.0\nlanguage: [en, fr]\ndatasets: [squad]\n"
        b"tags: [custom]\npipeline_tag: fill-mask\nlibrary_name: transformers\n"
        b"base_model: bert-base-uncased\n---\n"
    )
    facts = card_facts(readme, "model")
    assert facts.pipeline_tag == "fill-mask"
    assert facts.library_name == "transformers"
    assert facts.card_data["license"] == "apache-2.0"
    for tag in ("custom", "transformers", "fill-mask", "license:apache-2.0", "dataset:squad",
                "en", "language:fr", "base_model:bert-base-uncased"):
        assert tag in facts.tags
    assert len(facts.tags) == len(set(facts.tags))


def test_broken_card_leaves_repo_usable():
    facts = card_facts(b"---\n: : :\n  - [\n---\n", "model")
    assert facts.card_data is None and facts.tags == []
    assert card_facts(None, "dataset").tags == []
