"""`cove sft` and `cove dpo` as subprocesses, as `trl sft` / `trl dpo` are run: a model folder, a
local dataset file, config fields as flags (underscores or dashes, bools alone or with a value,
lists, JSON dicts), LoRA from the ModelConfig flags; the trained model or adapter is saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cove.trl.scripts import ModelConfig, ScriptArguments, parse
from cove.trl.sft_config import SFTConfig
from tests.trl.conftest import PREFERENCE, PROMPT_COMPLETION

REPO = Path(__file__).resolve().parents[2]


def cove(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cove", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def write_jsonl(path: Path, columns: dict[str, list]) -> Path:
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(),
                                                                      strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_flags_become_the_dataclasses_fields():
    script, config, model = parse("cove sft", SFTConfig, [
        "--dataset_name", "data.jsonl", "--output-dir", "out", "--learning_rate", "1e-3",
        "--packing", "--bf16", "false", "--use_peft", "--lora_target_modules", "q_proj",
        "v_proj", "--max_steps", "3", "--model_init_kwargs", '{"dtype": "bfloat16"}',
        "--model_name_or_path", "m"])
    assert script == ScriptArguments(dataset_name="data.jsonl")
    assert (config.output_dir, config.learning_rate, config.packing, config.bf16,
            config.max_steps, config.model_init_kwargs) == ("out", 1e-3, True, False, 3,
                                                            {"dtype": "bfloat16"})
    assert model == ModelConfig(model_name_or_path="m", use_peft=True,
                                lora_target_modules=["q_proj", "v_proj"])


def test_cove_sft_trains_a_lora_adapter_from_a_local_file(tiny, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", PROMPT_COMPLETION)
    done = cove("sft", "--model_name_or_path", tiny["llama"], "--dataset_name", data,
                "--output_dir", "out", "--max_steps", "2", "--per_device_train_batch_size", "2",
                "--bf16", "false", "--report_to", "none", "--use_peft", "--lora_r", "4",
                "--lora_target_modules", "q_proj", "v_proj", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Model saved to out" in done.stdout
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_cove_dpo_trains_the_model(tiny, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCE)
    done = cove("dpo", "--model_name_or_path", tiny["llama"], "--dataset_name", data,
                "--output-dir", "out", "--max-steps", "1", "--per-device-train-batch-size", "2",
                "--bf16", "false", "--report-to", "none", "--beta", "0.2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "out" / "training_args.json").read_text())
    assert saved["beta"] == 0.2


@pytest.mark.parametrize("args, message", [
    (["--dataset_name", "nowhere.jsonl"], "--model_name_or_path is required"),
    (["--model_name_or_path", "m", "--dataset_name", "data.xml"], "cannot read data.xml"),
    (["--model_name_or_path", "m", "--bogus", "1"], "unrecognized arguments: --bogus"),
    (["--model_name_or_path", "m", "--packing", "maybe"], "expected true or false"),
])
def test_bad_command_lines_say_what_is_wrong(args, message, tmp_path):
    (tmp_path / "data.xml").write_text("<rows/>")
    done = cove("sft", "--output_dir", "out", *args, cwd=tmp_path)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


def test_help_lists_every_config_field(tmp_path):
    done = cove("sft", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for flag in ("--dataset_name", "--model_name_or_path", "--packing", "--max_length",
                 "--learning_rate", "--lora_r", "--assistant_only_loss"):
        assert flag in done.stdout
