"""PeftModel's behaviour: merging, unloading, disabling and switching adapters, trainable
parameters, one training step against peft's, the seed snippet, and the errors."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re

import pytest
import torch

import cove.peft
import peft
from cove.models import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM
from cove.peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from tests.peft.conftest import assert_close, batch, load, logits, randomize_adapter

ADAPTERS = {
    "lora-llama": ("llama", LoraConfig(target_modules="all-linear", r=4)),
    "lora-embedding-head": ("llama", LoraConfig(target_modules=["embed_tokens", "q_proj"],
                                                modules_to_save=["lm_head"])),
    "dora-llama": ("llama", LoraConfig(target_modules=["v_proj", "up_proj"], use_dora=True)),
    "lora-gpt2": ("gpt2", LoraConfig(target_modules=["c_attn", "c_proj"], r=2)),
    "dora-gpt2": ("gpt2", LoraConfig(target_modules=["c_fc"], use_dora=True)),
    "lora-bert": ("bert", LoraConfig(task_type="SEQ_CLS", target_modules=["query", "dense"])),
    "ia3-llama": ("llama", IA3Config()),
    "ia3-gpt2": ("gpt2", IA3Config()),
}


def adapted(folders, name: str, seed: int = 3) -> tuple[str, PeftModel]:
    kind, config = ADAPTERS[name]
    model = randomize_adapter(get_peft_model(load(folders, kind, "cove"),
                                             copy.deepcopy(config)), seed)
    with torch.no_grad():  # IA3 scales near 1, as trained ones are (unmerging divides by them)
        for n, p in model.named_parameters():
            if "ia3_l" in n:
                p.add_(1.0)
    return kind, model.eval()


@pytest.mark.parametrize("name", ADAPTERS)
def test_merge_disable_and_unload(name, folders):
    # In float64: merged weights round differently from the unmerged sum, in float32 by
    # ~2e-5 on these logits (as in peft), and this checks the merge, not the rounding.
    kind, model = adapted(folders, name)
    model.double()
    base = logits(load(folders, kind, "cove").double(), kind)
    out = logits(model, kind)
    assert (out - base).abs().max() > 1e-3  # the adapter matters
    with model.disable_adapter():
        assert_close(logits(model, kind), base)
    assert_close(logits(model, kind), out)  # back on after the block
    model.merge_adapter()
    assert_close(logits(model, kind), out)
    with model.disable_adapter():  # unmerges first
        assert_close(logits(model, kind), base)
    merged = copy.deepcopy(model).merge_and_unload()
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    assert_close(logits(merged, kind), out)
    if "lm_head" not in str(ADAPTERS[name][1].modules_to_save):
        assert_close(logits(model.unload(), kind), base)


def test_switching_adding_and_deleting_adapters(folders):
    kind, model = adapted(folders, "lora-llama")
    first = logits(model, kind)
    model.add_adapter("other", LoraConfig(target_modules=["q_proj", "down_proj"],
                                          init_lora_weights=False))
    assert model.active_adapter == "default"
    assert_close(logits(model, kind), first)  # added, not active
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".other." in n)
    model.set_adapter("other")
    second = logits(model, kind)
    assert (second - first).abs().max() > 1e-3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other." in n for n in trainable)
    model.set_adapter("default")
    assert_close(logits(model, kind), first)
    with pytest.raises(ValueError, match="No adapter named 'missing'.*default, other"):
        model.set_adapter("missing")
    with pytest.raises(ValueError, match="Cannot add a IA3 adapter to a model with LORA"):
        model.add_adapter("ia3", IA3Config())
    model.delete_adapter("default")
    assert list(model.peft_config) == ["other"] and model.active_adapter == "other"
    assert_close(logits(model, kind), second)
    assert not any(".default." in n for n, _ in model.named_parameters())


def test_several_adapters_save_in_subfolders_and_reload(folders, tmp_path):
    kind, model = adapted(folders, "lora-gpt2")
    model.add_adapter("second", LoraConfig(target_modules=["c_fc"], init_lora_weights=False))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "second" / "adapter_config.json").is_file()
    assert (tmp_path / "README.md").read_text().startswith("---\nbase_model: ")
    model.set_adapter("second")
    expected = logits(model, kind)
    loaded = PeftModel.from_pretrained(load(folders, kind, "cove"), tmp_path)
    loaded.load_adapter(tmp_path / "second", adapter_name="second")
    loaded.set_adapter("second")
    assert_close(logits(loaded, kind), expected)


BIASES = {f"bias-{bias}": ("bert", LoraConfig(task_type="SEQ_CLS", target_modules=["query"],
                                              bias=bias)) for bias in ("all", "lora_only")}


def test_print_trainable_parameters_and_counts_as_peft(folders):
    for name, (kind, config) in {**ADAPTERS, **BIASES}.items():
        ours = get_peft_model(load(folders, kind, "cove"), copy.deepcopy(config))
        reference_config = getattr(peft, type(config).__name__)(**{
            k: v for k, v in config.to_dict().items()
            if k not in ("peft_type", "peft_version", "base_model_name_or_path")})
        theirs = peft.get_peft_model(load(folders, kind, "ref"), reference_config)
        assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters(), name
        printed = []
        for model in (ours, theirs):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                model.print_trainable_parameters()
            printed.append(out.getvalue())
        assert printed[0] == printed[1]
        assert re.fullmatch(r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| "
                            r"trainable%: \d+\.\d{4}\n", printed[0])


SEED_SNIPPET = """
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(FOLDER)
peft_config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=32, lora_dropout=0.1,
                         target_modules=["q_proj", "v_proj"])
model = get_peft_model(model, peft_config)
model.print_trainable_parameters()
"""


def test_the_seed_snippet_prints_what_peft_prints(folders):
    printed = []
    for code in (SEED_SNIPPET, SEED_SNIPPET.replace("from peft import", "from cove.peft import")
                 .replace("from transformers import", "from cove import")):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, {"FOLDER": str(folders["llama"])})
        printed.append(out.getvalue())
    assert printed[0] == printed[1] == "trainable params: 3,584 || all params: 103,744 || " \
                                       "trainable%: 3.4547\n"


def test_prompt_tuning_text_initialisation_as_peft(folders):
    """TEXT init: the virtual tokens start as the embeddings of the text's tokens (repeated to
    fill them); SAMPLE_VOCAB: rows of the vocabulary's embeddings."""
    options = dict(task_type="CAUSAL_LM", num_virtual_tokens=7, prompt_tuning_init="TEXT",
                   prompt_tuning_init_text="the quick brown",
                   tokenizer_name_or_path=str(folders["llama"]))
    ours = get_peft_model(load(folders, "llama", "cove"), cove.peft.PromptTuningConfig(**options))
    theirs = peft.get_peft_model(load(folders, "llama", "ref"), peft.PromptTuningConfig(**options))
    weight = ours.prompt_encoder["default"].embedding.weight
    assert torch.equal(weight, theirs.prompt_encoder["default"].embedding.weight)
    assert weight.requires_grad
    sampled = get_peft_model(load(folders, "llama", "cove"), cove.peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, prompt_tuning_init="SAMPLE_VOCAB"))
    vocabulary = sampled.word_embeddings.weight
    for row in sampled.prompt_encoder["default"].embedding.weight:
        assert (vocabulary == row).all(-1).any()


def test_one_training_step_changes_only_the_adapter_as_peft(folders, tmp_path):
    reference = peft.get_peft_model(load(folders, "llama", "ref"), peft.LoraConfig(
        task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False))
    reference.save_pretrained(tmp_path)
    inputs = batch("llama")
    inputs["labels"] = inputs["input_ids"].clone()
    steps = {}
    for library, model in (
            ("ref", peft.PeftModel.from_pretrained(load(folders, "llama", "ref"), tmp_path,
                                                   is_trainable=True)),
            ("cove", PeftModel.from_pretrained(load(folders, "llama", "cove"), tmp_path,
                                               is_trainable=True))):
        model.train()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        after = dict(model.named_parameters())
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        steps[library] = (loss.item(), changed, {n: after[n].detach() for n in changed})
    (ref_loss, ref_changed, ref_values), (loss, changed, values) = steps["ref"], steps["cove"]
    assert changed == ref_changed
    assert changed and all(".lora_" in n for n in changed)
    assert abs(loss - ref_loss) <= 1e-5
    for name in changed:
        assert_close(values[name], ref_values[name])


def test_lora_wraps_a_quantised_base_layer(folders):
    """Any layer with in_features/out_features/forward works (here a 4-bit one): the adapter
    adds the same as over the dequantised float weights; merging requantises."""
    quantised = AutoModelForCausalLM.from_pretrained(
        str(folders["llama"]), quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    config = LoraConfig(target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(quantised, config).eval()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, layer.base_layer.dequantize()) + \
            layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
        assert_close(layer(x), expected, 1e-4)
    assert model.get_nb_trainable_parameters()[1] == \
        get_peft_model(load(folders, "llama", "cove"), copy.deepcopy(config)) \
        .get_nb_trainable_parameters()[1]
    with torch.no_grad():
        requantised = copy.deepcopy(layer.base_layer)
        requantised.quantize_(layer.base_layer.dequantize() + layer.delta_weight("default"))
    merged = model.merge_and_unload()
    merged_layer = merged.model.layers[0].self_attn.q_proj
    assert type(merged_layer) is type(requantised)
    assert torch.equal(merged_layer.dequantize(), requantised.dequantize())


# -- errors ----------------------------------------------------------------------------------------
def test_targets_that_match_nothing_list_what_exists(folders):
    with pytest.raises(ValueError, match=r"match no module of LlamaForCausalLM.*down_proj.*"
                                         r"q_proj"):
        get_peft_model(load(folders, "llama", "cove"), LoraConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="not supported by LoRA"):
        get_peft_model(load(folders, "llama", "cove"), LoraConfig(target_modules=["mlp"]))
    with pytest.raises(ValueError, match="Prefix tuning needs a model that takes "
                                         "past_key_values"):
        get_peft_model(load(folders, "bert", "cove"), cove.peft.PrefixTuningConfig(
            task_type="SEQ_CLS", num_virtual_tokens=2))


def test_an_adapter_for_another_base_is_refused(folders, tmp_path):
    get_peft_model(load(folders, "llama", "cove"), LoraConfig(target_modules=["q_proj"])) \
        .save_pretrained(tmp_path)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=40,
                                         num_hidden_layers=2, num_attention_heads=4))
    with pytest.raises(ValueError, match=r"other shapes than this model's \(.*q_proj\.lora_A"
                                         r"\.default\.weight: adapter \(8, 64\), model \(8, 32\)"
                                         r".*made for another base model"):
        PeftModel.from_pretrained(other, tmp_path)
    with pytest.raises(ValueError, match=r"match no module of GPT2LMHeadModel.*c_attn"):
        PeftModel.from_pretrained(load(folders, "gpt2", "cove"), tmp_path)


def test_missing_files_and_config_keys(folders, tmp_path):
    base = load(folders, "llama", "cove")
    with pytest.raises(FileNotFoundError, match="No adapter_config.json in .*not a PEFT adapter"):
        PeftModel.from_pretrained(base, tmp_path)
    get_peft_model(base, LoraConfig(target_modules=["q_proj"])).save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="No adapter weights in .*adapter_model"
                                                r"\.safetensors or adapter_model\.bin"):
        PeftModel.from_pretrained(load(folders, "llama", "cove"), tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    data["a_key_from_a_newer_peft"] = 1
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"ignoring keys Cove does not know "
                                         r"\['a_key_from_a_newer_peft'\]"):
        config = cove.peft.PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, LoraConfig) and config.target_modules == ["q_proj"]
    with pytest.raises(ValueError, match=r"LoraConfig\(use_qalora=True\) is not supported"):
        LoraConfig(use_qalora=True)
    with pytest.raises(ValueError, match="bias='some'"):
        LoraConfig(bias="some")
    with pytest.raises(ValueError, match="init_lora_weights='olora'"):
        LoraConfig(init_lora_weights="olora")
