"""An adapter pushed by Cove to a live Cove server loads from it in Cove (PeftModel and the Auto
classes) and in peft (a fresh process with HF_ENDPOINT: huggingface_hub reads it at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import cove.peft
from cove.hub import HubApi
from cove.models import AutoModelForCausalLM
from tests.peft.conftest import assert_close, batch, load, logits, randomize_adapter
from tests.server.conftest import seeded_server

REPO = "alice/tiny-llama-lora"
PEFT_LOADER = textwrap.dedent("""
    import json, sys
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, repo, inputs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), repo)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(inputs)).logits
    print(json.dumps(out.tolist()))
""")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = seeded_server(tmp_path_factory.mktemp("peft-hub"))
    yield live
    live.stop()


def test_an_adapter_pushed_to_a_cove_server_loads_in_cove_and_peft(folders, server, tmp_path):
    token = server.accounts.alice_write
    made = cove.peft.get_peft_model(load(folders, "llama", "cove"), cove.peft.LoraConfig(
        task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], use_dora=True))
    randomize_adapter(made, seed=9).eval()
    expected = logits(made, "llama")
    made.push_to_hub(REPO, token=token, endpoint=server.url)

    hub = dict(token=token, endpoint=server.url, cache_dir=tmp_path / "cache")
    loaded = cove.peft.PeftModel.from_pretrained(load(folders, "llama", "cove"), REPO, **hub)
    assert_close(logits(loaded, "llama"), expected)
    auto = AutoModelForCausalLM.from_pretrained(REPO, **hub)  # base from adapter_config.json
    assert isinstance(auto, cove.peft.PeftModelForCausalLM)
    assert_close(logits(auto, "llama"), expected)
    api = HubApi(endpoint=server.url, token=token)
    api.create_repo("alice/config-only")
    made.save_pretrained(tmp_path / "saved")
    api.upload_file(path_or_fileobj=str(tmp_path / "saved" / "adapter_config.json"),
                    path_in_repo="adapter_config.json", repo_id="alice/config-only")
    with pytest.raises(FileNotFoundError, match=r"No adapter weights in alice/config-only: "
                                                r"expected adapter_model\.safetensors"):
        cove.peft.PeftModel.from_pretrained(load(folders, "llama", "cove"), "alice/config-only",
                                            **hub)
    with pytest.raises(FileNotFoundError, match=r"No adapter_config\.json in "
                                                r"alice/tiny-llama-lora \(subfolder nested\)"):
        cove.peft.PeftModel.from_pretrained(load(folders, "llama", "cove"), REPO,
                                            subfolder="nested", **hub)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COVE_"))}
    env.update(HF_ENDPOINT=server.url, HF_TOKEN=token, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ETAG_TIMEOUT="60",
               HF_HUB_DOWNLOAD_TIMEOUT="60")
    inputs = batch("llama")["input_ids"].tolist()
    proc = subprocess.run([sys.executable, "-c", PEFT_LOADER, str(folders["llama"]), REPO,
                           json.dumps(inputs)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert_close(theirs, expected)
