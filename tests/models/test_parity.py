"""Parity with transformers (the test oracle) for every encoder family and head, both ways.

Tiny random models: transformers' checkpoint -> Cove, and Cove's checkpoint -> transformers,
with identical outputs (float32, max abs diff <= 1e-5) on a padded batch, every hidden state,
the attention weights and the losses. Also: configs keep unknown keys, remote code is refused,
base <-> head checkpoints, bfloat16 loading, sharded and .bin checkpoints.
"""

from __future__ import annotations

import json

import pytest
import torch

import cove.models as cm

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
TINY = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37, "max_position_embeddings": 64}
FAMILIES: dict[str, dict] = {
    "bert": TINY,
    "roberta": TINY,
    "xlm-roberta": TINY,
    "distilbert": {"vocab_size": 99, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37,
                   "max_position_embeddings": 64},
    "mpnet": TINY,
}
WITH_TOKEN_TYPES = {"bert", "roberta", "xlm-roberta"}
HEADS = {  # task -> the Auto class name, the same in both libraries
    "base": "AutoModel",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
}
NUM_LABELS = {"sequence-classification": 3, "token-classification": 5}


def hf_config(family: str, head: str = "base"):
    kwargs = dict(FAMILIES[family])
    if head in NUM_LABELS:
        kwargs["num_labels"] = NUM_LABELS[head]
    return transformers.AutoConfig.for_model(family, **kwargs)


def cove_config(family: str, head: str = "base") -> cm.PretrainedConfig:
    kwargs = dict(FAMILIES[family])
    if head in NUM_LABELS:
        kwargs["num_labels"] = NUM_LABELS[head]
    return cm.AutoConfig.for_model(family, **kwargs)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (LayerNorms too, so no two modules are interchangeable)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied parameters come once and stay tied
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def hf_model(family: str, head: str, seed: int = 0):
    torch.manual_seed(seed)
    # eager: transformers' SDPA path returns no attention weights
    model = getattr(transformers, HEADS[head]).from_config(hf_config(family, head),
                                                            attn_implementation="eager")
    return randomize(model, seed)


def hf_load(head: str, path, **kwargs):
    """transformers' from_pretrained (in eval mode), eager attention."""
    return getattr(transformers, HEADS[head]).from_pretrained(
        path, attn_implementation="eager", **kwargs)


def batch(family: str, head: str) -> dict[str, torch.Tensor]:
    """Three sequences of 9, 6 and 3 tokens, right-padded with the family's pad id."""
    pad = cove_config(family).pad_token_id
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([9, 6, 3])
    mask = (torch.arange(9)[None] < lengths[:, None]).long()
    ids = torch.randint(3, 99, (3, 9), generator=gen).masked_fill(mask == 0, pad)
    out = {"input_ids": ids, "attention_mask": mask}
    if family in WITH_TOKEN_TYPES:
        out["token_type_ids"] = (torch.arange(9)[None] >= 2).long().expand(3, 9) * mask
    if head == "masked-lm":
        labels = ids.clone().masked_fill(mask == 0, -100)
        labels[:, ::2] = -100
        out["labels"] = labels
    elif head == "sequence-classification":
        out["labels"] = torch.tensor([0, 2, 1])
    elif head == "token-classification":
        out["labels"] = torch.randint(0, 5, (3, 9), generator=gen).masked_fill(mask == 0, -100)
    elif head == "question-answering":
        out["start_positions"] = torch.tensor([1, 2, 0])
        out["end_positions"] = torch.tensor([3, 4, 20])  # beyond the sequence: ignored
    return out


def max_diff(ours, theirs, not_asked: tuple[str, ...] = ()) -> float:
    """Largest difference over the fields Cove returns; transformers' others must be empty."""
    worst = 0.0
    for key, value in ours.items():
        other = theirs[key]
        if isinstance(value, tuple):
            assert isinstance(other, tuple) and len(value) == len(other), key
            pairs = list(zip(value, other, strict=True))
        else:
            pairs = [(value, other)]
        for a, b in pairs:
            assert a.shape == b.shape and a.dtype == b.dtype, key
            worst = max(worst, (a - b).abs().max().item())
    for key in set(theirs.keys()) - set(ours.keys()) - set(not_asked):
        assert theirs[key] is None or theirs[key] == (), key  # e.g. BERT's cross_attentions
    return worst


MAX_DIFFS: dict[str, float] = {}


def assert_same_outputs(ours, theirs, family: str, head: str) -> None:
    """Cove's SDPA path and its eager path (weights requested) against transformers' eager."""
    inputs = batch(family, head)
    with torch.no_grad():
        expected = theirs(**inputs, output_hidden_states=True, output_attentions=True)
        fast = ours(**inputs, output_hidden_states=True)
        eager = ours(**inputs, output_hidden_states=True, output_attentions=True)
        as_tuple = ours(**inputs, return_dict=False)
        expected_tuple = theirs(**inputs, return_dict=False)
    assert len(expected.hidden_states) == ours.config.num_hidden_layers + 1
    assert len(eager.attentions) == ours.config.num_hidden_layers
    assert fast.attentions is None
    assert ("loss" in expected) == (head != "base") and ("loss" in fast) == (head != "base")
    diff = max(max_diff(fast, expected, ("attentions",)), max_diff(eager, expected))
    assert len(as_tuple) <= len(expected_tuple)
    for a, b in zip(as_tuple, expected_tuple, strict=False):
        diff = max(diff, (a - b).abs().max().item())
    MAX_DIFFS[family] = max(MAX_DIFFS.get(family, 0.0), diff)
    assert diff <= ATOL, f"{family} {head}: max abs diff {diff:.3g}"


def saved_keys(folder) -> set[str]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    keys: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            keys.update(st.keys())
    return keys


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_checkpoint_in_cove(family: str, head: str, tmp_path) -> None:
    theirs = hf_model(family, head)
    theirs.save_pretrained(tmp_path)
    ours, info = getattr(cm, HEADS[head]).from_pretrained(tmp_path, output_loading_info=True)
    assert type(ours).__name__ == type(theirs).__name__
    assert ours.config.model_type == family
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert set(ours.state_dict()) == set(theirs.state_dict())
    assert_same_outputs(ours, theirs, family, head)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cove_checkpoint_in_transformers(family: str, head: str, tmp_path) -> None:
    torch.manual_seed(0)
    ours = randomize(getattr(cm, HEADS[head]).from_config(cove_config(family, head)))
    ours.save_pretrained(tmp_path / "cove")
    theirs, info = hf_load(head, tmp_path / "cove", output_loading_info=True)
    assert type(theirs).__name__ == type(ours).__name__
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.save_pretrained(tmp_path / "hf")  # both write the same tensors (tied ones left out)
    assert saved_keys(tmp_path / "cove") == saved_keys(tmp_path / "hf")
    assert_same_outputs(ours, theirs, family, head)


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_embeds_and_position_ids(family: str, tmp_path) -> None:
    # Without input_ids RoBERTa and MPNet cannot see padding: positions count from pad + 1.
    theirs = hf_model(family, "base")
    theirs.save_pretrained(tmp_path)
    ours = cm.AutoModel.from_pretrained(tmp_path)
    inputs = batch(family, "base")
    embeds = ours.get_input_embeddings()(inputs.pop("input_ids"))
    positions = torch.tensor([[5, 3, 8, 2, 2, 7, 1, 0, 4]]).expand(3, 9)
    with torch.no_grad():
        for extra in ({}, {"position_ids": positions}):
            a = ours(inputs_embeds=embeds, **inputs, **extra).last_hidden_state
            b = theirs(inputs_embeds=embeds, **inputs, **extra).last_hidden_state
            assert (a - b).abs().max() <= ATOL


def test_fresh_models_tie_like_transformers() -> None:
    for family in FAMILIES:
        ours = cm.AutoModelForMaskedLM.from_config(cove_config(family))
        out = ours.get_output_embeddings().weight
        assert out is ours.get_submodule(ours.base_model_prefix).get_input_embeddings().weight


@pytest.mark.parametrize("family", FAMILIES)
def test_config_keeps_unknown_keys(family: str, tmp_path) -> None:
    hf_config(family).save_pretrained(tmp_path / "in")
    path = tmp_path / "in" / "config.json"
    data = json.loads(path.read_text())
    data.update(my_custom_field={"a": [1, 2], "b": None}, another_key="kept")
    path.write_text(json.dumps(data))
    config = cm.AutoConfig.from_pretrained(tmp_path / "in")
    assert type(config).__name__ == type(hf_config(family)).__name__
    assert config.my_custom_field == {"a": [1, 2], "b": None}
    assert config.hidden_size == 32 and config.num_hidden_layers == 2  # DistilBERT: aliases
    config.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["my_custom_field"] == {"a": [1, 2], "b": None}
    assert saved["another_key"] == "kept" and saved["model_type"] == family
    assert {k: v for k, v in saved.items() if k in data and k != "transformers_version"} == {
        k: v for k, v in data.items() if k != "transformers_version"}
    again = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert again.my_custom_field == {"a": [1, 2], "b": None}
    assert again.hidden_size == 32


def test_trust_remote_code_refused(tmp_path) -> None:
    hf_model("bert", "base").save_pretrained(tmp_path)
    for load in (cm.AutoConfig.from_pretrained, cm.AutoModel.from_pretrained,
                 cm.BertModel.from_pretrained, cm.RobertaModel.from_pretrained):
        with pytest.raises(ValueError, match="trust_remote_code=True is refused"):
            load(tmp_path, trust_remote_code=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_checkpoint_into_head_and_back(family: str, tmp_path) -> None:
    # A base checkpoint in a classifier: the head is reported missing, as transformers does.
    hf_model(family, "base").save_pretrained(tmp_path / "base")
    ours, info = cm.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", output_loading_info=True, num_labels=3)
    _, expected = hf_load("sequence-classification", tmp_path / "base",
                          output_loading_info=True, num_labels=3)
    assert set(info["missing_keys"]) == set(expected["missing_keys"])
    assert info["missing_keys"] and all(k.startswith(("classifier.", "pre_classifier."))
                                        for k in info["missing_keys"])
    assert ours.config.num_labels == 3
    # A classifier checkpoint in the base model: the encoder loads, the head is left out.
    head = hf_model(family, "sequence-classification")
    head.save_pretrained(tmp_path / "head")
    ours, info = cm.AutoModel.from_pretrained(tmp_path / "head", output_loading_info=True)
    theirs, expected = hf_load("base", tmp_path / "head", output_loading_info=True)
    assert set(info["missing_keys"]) == set(expected["missing_keys"])  # RoBERTa's pooler
    inputs = batch(family, "base")
    with torch.no_grad():
        a = ours(**inputs).last_hidden_state
        b = theirs(**inputs).last_hidden_state
        c = head.get_submodule(head.base_model_prefix)(**inputs).last_hidden_state
    assert (a - b).abs().max() <= ATOL and (a - c).abs().max() <= ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16(family: str, tmp_path) -> None:
    hf_model(family, "masked-lm").save_pretrained(tmp_path)
    ours = cm.AutoModelForMaskedLM.from_pretrained(tmp_path, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    assert ours.dtype == torch.bfloat16 and ours.config.dtype == "bfloat16"
    theirs = hf_load("masked-lm", tmp_path, dtype=torch.bfloat16)
    full = cm.AutoModelForMaskedLM.from_pretrained(tmp_path)
    inputs = batch(family, "masked-lm")
    with torch.no_grad():
        low, ref, exact = ours(**inputs).logits, theirs(**inputs).logits, full(**inputs).logits
    assert low.dtype == torch.bfloat16
    # bfloat16 keeps ~3 significant digits: near transformers' bf16 and Cove's own float32
    scale = exact.abs().max().item()
    assert (low.float() - ref.float()).abs().max() <= 0.05 * scale
    assert (low.float() - exact).abs().max() <= 0.05 * scale


def test_sharded_checkpoints(tmp_path) -> None:
    ours = randomize(cm.AutoModelForMaskedLM.from_config(cove_config("bert")))
    ours.save_pretrained(tmp_path / "cove", max_shard_size="20KB")
    index = json.loads((tmp_path / "cove" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "cove" / "model.safetensors").exists()
    assert all((tmp_path / "cove" / s).is_file() for s in shards)
    again = cm.AutoModelForMaskedLM.from_pretrained(tmp_path / "cove")
    theirs = hf_load("masked-lm", tmp_path / "cove")
    assert_same_outputs(again, theirs, "bert", "masked-lm")
    assert_same_outputs(ours, theirs, "bert", "masked-lm")
    # and transformers' own sharded save loads in Cove
    theirs.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert_same_outputs(cm.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf"), theirs,
                        "bert", "masked-lm")


def test_pytorch_model_bin(tmp_path) -> None:
    # transformers 5 always writes safetensors (safe_serialization=False is ignored): write the
    # pytorch_model.bin that transformers 4 wrote with it, a plain state_dict, tied keys too.
    theirs = hf_model("roberta", "masked-lm")
    theirs.config.save_pretrained(tmp_path)
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
    ours, info = cm.AutoModelForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert_same_outputs(ours, theirs, "roberta", "masked-lm")
    assert_same_outputs(ours, hf_load("masked-lm", tmp_path), "roberta", "masked-lm")


def test_distilbert_sinusoidal_positions() -> None:
    config = dict(FAMILIES["distilbert"], sinusoidal_pos_embds=True)
    ours = cm.DistilBertModel(cm.DistilBertConfig(**config))
    theirs = transformers.DistilBertModel(transformers.DistilBertConfig(**config))
    a = ours.embeddings.position_embeddings.weight
    b = theirs.embeddings.position_embeddings.weight
    assert (a - b).abs().max() <= 1e-6
