"""Adapters on encoder-decoder models (TaskType.SEQ_2_SEQ_LM): T5, BART and Marian saved by
transformers; adapters made by peft load in Cove and the reverse, with the same logits, loss,
generated ids and files; the default target modules are peft's."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import transformers
from safetensors.torch import load_file

import cove.peft
import peft
from cove.models import AutoModelForSeq2SeqLM
from tests.models import test_bart, test_marian, test_t5
from tests.peft.conftest import assert_close, randomize_adapter
from tests.peft.test_parity import normalised

IDS = torch.tensor([[5, 6, 7, 8, 9, 1], [10, 11, 12, 1, 3, 3]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
LABELS = torch.tensor([[13, 14, 15, 1], [16, 1, -100, -100]])
KINDS = ("t5", "bart", "marian")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, object]:
    out = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(f"peft-{kind}")
        torch.manual_seed(0)
        if kind == "t5":
            test_t5._save_v10(folder)
        elif kind == "bart":
            transformers.BartForConditionalGeneration(
                transformers.BartConfig(**test_bart.SMALL)).save_pretrained(folder)
        else:
            transformers.MarianMTModel(
                transformers.MarianConfig(**test_marian.SMALL)).save_pretrained(folder)
        out[kind] = folder
    return out


def load(folders: dict, kind: str, library: str) -> torch.nn.Module:
    auto = AutoModelForSeq2SeqLM if library == "cove" else transformers.AutoModelForSeq2SeqLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return auto.from_pretrained(str(folders[kind]))


def outputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and loss with labels (the decoder's inputs shifted from them)."""
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK, labels=LABELS)
    return out.logits, out.loss


def generated(model: torch.nn.Module, **kwargs) -> torch.Tensor:
    return model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=6, **kwargs)


CASES = {
    "lora-t5-default": ("t5", "LoraConfig", dict(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8)),
    "lora-t5-all-linear": ("t5", "LoraConfig", dict(task_type="SEQ_2_SEQ_LM",
                                                    target_modules="all-linear")),
    "lora-bart-default": ("bart", "LoraConfig", dict(task_type="SEQ_2_SEQ_LM", r=4)),
    "lora-bart-dora": ("bart", "LoraConfig", dict(task_type="SEQ_2_SEQ_LM", use_dora=True,
                                                  target_modules=["k_proj", "fc1"])),
    "lora-marian": ("marian", "LoraConfig", dict(task_type="SEQ_2_SEQ_LM",
                                                 target_modules=["q_proj", "v_proj"])),
    "ia3-t5-default": ("t5", "IA3Config", dict(task_type="SEQ_2_SEQ_LM")),
}


@pytest.mark.parametrize("case", CASES)
def test_seq2seq_adapters_load_both_ways(case, folders, tmp_path):
    kind, config_name, options = CASES[case]
    # peft -> Cove
    reference = peft.get_peft_model(load(folders, kind, "ref"),
                                    getattr(peft, config_name)(**options))
    randomize_adapter(reference, seed=1)
    reference.save_pretrained(tmp_path / "peft")
    ours = cove.peft.PeftModel.from_pretrained(load(folders, kind, "cove"), tmp_path / "peft")
    assert type(ours).__name__ == type(reference).__name__ == "PeftModelForSeq2SeqLM"
    reference.eval()
    for a, b in zip(outputs(ours), outputs(reference), strict=True):
        assert_close(a, b)
    assert torch.equal(generated(ours), generated(reference))
    assert torch.equal(generated(ours, num_beams=3), generated(reference, num_beams=3))

    # Cove -> peft
    made = cove.peft.get_peft_model(load(folders, kind, "cove"),
                                    getattr(cove.peft, config_name)(**options))
    assert isinstance(made, cove.peft.PeftModelForSeq2SeqLM)
    randomize_adapter(made, seed=2)
    made.save_pretrained(tmp_path / "cove")
    loaded = peft.PeftModel.from_pretrained(load(folders, kind, "ref"), tmp_path / "cove")
    made.eval()
    for a, b in zip(outputs(made), outputs(loaded), strict=True):
        assert_close(a, b)
    assert torch.equal(generated(made), generated(loaded))

    # the same files
    theirs = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    mine = load_file(tmp_path / "cove" / "adapter_model.safetensors")
    assert sorted(mine) == sorted(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    config = {side: json.loads((tmp_path / side / "adapter_config.json").read_text())
              for side in ("peft", "cove")}
    assert normalised(config["cove"]) == normalised(config["peft"])


def test_default_target_modules_are_peft_s(folders):
    for kind, expected in (("t5", ["q", "v"]), ("bart", ["q_proj", "v_proj"])):
        reference = peft.get_peft_model(load(folders, kind, "ref"),
                                        peft.LoraConfig(task_type="SEQ_2_SEQ_LM"))
        ours = cove.peft.get_peft_model(load(folders, kind, "cove"),
                                        cove.peft.LoraConfig(task_type="SEQ_2_SEQ_LM"))
        assert sorted(reference.peft_config["default"].target_modules) == expected
        assert sorted(ours.peft_config["default"].target_modules) == expected
        assert sorted(n for n, _ in ours.named_parameters() if "lora_" in n) == \
            sorted(n for n, _ in reference.named_parameters() if "lora_" in n)
    # peft has no Marian default: Cove takes BART's (the same attention layers)
    marian = cove.peft.get_peft_model(load(folders, "marian", "cove"),
                                      cove.peft.LoraConfig(task_type=cove.peft.TaskType.SEQ_2_SEQ_LM))
    assert sorted(marian.peft_config["default"].target_modules) == ["q_proj", "v_proj"]


def test_forward_with_decoder_inputs_and_adapter_switched_off(folders):
    base = load(folders, "t5", "cove")
    with torch.no_grad():
        plain = base(input_ids=IDS, attention_mask=MASK, labels=LABELS).logits
    model = randomize_adapter(cove.peft.get_peft_model(
        base, cove.peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=2)), seed=3).eval()
    decoder_input_ids = base.prepare_decoder_input_ids_from_labels(LABELS)
    with torch.no_grad():
        by_labels = model(input_ids=IDS, attention_mask=MASK, labels=LABELS).logits
        by_ids = model(input_ids=IDS, attention_mask=MASK,
                       decoder_input_ids=decoder_input_ids).logits
        with model.disable_adapter():
            off = model(input_ids=IDS, attention_mask=MASK, labels=LABELS).logits
    assert_close(by_ids, by_labels)
    assert_close(off, plain)
    assert (by_labels - plain).abs().max() > 1e-3  # the adapter changes the outputs


def test_prompt_learning_on_seq2seq_is_refused_clearly(folders):
    with pytest.raises(ValueError, match="CAUSAL_LM or SEQ_CLS"):
        cove.peft.get_peft_model(load(folders, "t5", "cove"), cove.peft.PromptTuningConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4))
