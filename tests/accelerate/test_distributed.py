"""Two processes over gloo on CPU, started by `cove launch` (torchrun) and by
notebook_launcher: DDP and FSDP2 train to the weights of one process with twice the batch,
gather_for_metrics returns exactly the eval set, checkpoints resume exactly."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cove.accelerate import notebook_launcher
from cove.accelerate.launchers import torchrun_command
from cove.cli import main

WORKER = os.path.join(os.path.dirname(__file__), "worker.py")


def _launch(tmp_path, *options):
    out = tmp_path / "out.pt"
    proc = subprocess.run([sys.executable, "-m", "cove", "launch", "--nproc-per-node", "2",
                           *options, WORKER, str(out)], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, torch.load(out, weights_only=False)


def _one_process(batches, per_step):
    """The worker's training on one process: each optimizer step over the union of
    `per_step` consecutive global batches (process 0's initial weights)."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for start in range(0, len(batches), per_step):
        index = torch.tensor(sum(batches[start:start + per_step], []))
        F.cross_entropy(model(x[index]), y[index]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad()
    return model.state_dict()


def _close(weights, expected, atol=1e-5):
    assert weights.keys() == expected.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, expected[name], atol=atol, rtol=0)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_train_as_one_with_twice_the_batch(tmp_path, mode):
    proc, r = _launch(tmp_path, *(["--use-fsdp"] if mode == "fsdp" else []),
                      "--mixed-precision", "bf16")
    assert r["distributed_type"] == ("FSDP" if mode == "fsdp" else "MULTI_CPU")
    assert "2 processes on CPU over gloo" in proc.stderr
    assert r["launch_precision"] == "bf16"  # cove launch's default reached the Accelerator
    batches = r["batches_1"]
    assert len(batches) == 16 and all(len(b) == 8 for b in batches)
    for epoch in (batches[:8], batches[8:]):  # both processes shuffled alike: a permutation
        assert sorted(sum(epoch, [])) == list(range(64))
    assert batches[:8] != batches[8:]
    _close(r["weights_1"], _one_process(batches, 1))
    # accumulation of 2: gradients stay local on the first micro-batch (no_sync), and the
    # step equals one process's step over both global batches
    assert r["batches_2"] == batches
    _close(r["weights_2"], _one_process(batches, 2))

    # evaluation: 21 samples, 8 a step: the last step's padding is dropped again
    assert r["eval"] == list(range(21))
    assert r["eval_words"] == [f"w{i}" for i in range(21)]
    assert r["eval_shards"] == [[[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]],
                                [[4, 5, 6, 7], [12, 13, 14, 15], [20, 0, 1, 2]]]
    if mode == "ddp":  # accelerate 1.16 (cpu=True) on the same two processes agrees
        assert r["oracle_processes"] == 2
        assert r["oracle_eval"] == r["eval"] and r["oracle_shards"] == r["eval_shards"]
    assert r["padded"] == [0, 1, -1, 0, 1, 2] and r["reduced"] == [1.0, 0.5]
    assert "gather needs the same shape on every process, got [(2,), (3,)]" in r["gather_error"]
    assert r["split"] == [["a", "b"], ["c", "c"]]

    # resumed from the checkpoint of step 5: the same next batches and the same weights
    assert r["checkpoint_files"] == ["model.safetensors", "optimizer.bin", "random_states_0.pkl",
                                     "random_states_1.pkl"]
    assert r["resumed_run"] == r["full_run"][5:]
    _close(r["resumed_weights"], r["full_weights"], atol=0)


def _notebook_job(path):
    from cove.accelerate import Accelerator

    accelerator = Accelerator()
    total = accelerator.reduce(torch.tensor([accelerator.process_index + 1.0]))
    if accelerator.is_main_process:
        torch.save({"n": accelerator.num_processes, "total": total.item(),
                    "precision": accelerator.mixed_precision}, path)


def test_notebook_launcher_runs_a_function_on_two_processes(tmp_path):
    path = tmp_path / "out.pt"
    notebook_launcher(_notebook_job, (str(path),), num_processes=2, mixed_precision="fp16")
    assert torch.load(path) == {"n": 2, "total": 3.0, "precision": "fp16"}
    with pytest.raises(ValueError, match="num_processes must be an int >= 1"):
        notebook_launcher(_notebook_job, (str(path),), num_processes=0)


def test_launch_command_and_its_errors(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text("")
    command, env = torchrun_command(str(script), ["--lr", "3"], nproc_per_node=2,
                                    mixed_precision="bf16", use_fsdp=True)
    assert command[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                           str(script), "--lr", "3"]
    assert env["COVE_MIXED_PRECISION"] == "bf16" and env["COVE_USE_FSDP"] == "1"
    command, env = torchrun_command(str(script), [], nproc_per_node=1, nnodes=2, node_rank=1,
                                    master_addr="10.0.0.1", cpu=True)
    assert command[3:8] == ["--nproc-per-node=1", "--nnodes=2", "--node-rank=1",
                            "--master-addr=10.0.0.1", "--master-port=29500"]
    assert env["COVE_USE_CPU"] == "1"
    assert main(["launch", "--nnodes", "2", str(script)]) == 1
    assert "--nnodes > 1 needs --master-addr" in capsys.readouterr().err
    assert main(["launch", str(tmp_path / "missing.py")]) == 1
    assert "no script" in capsys.readouterr().err
    assert main(["launch", "--node-rank", "3", str(script)]) == 1
    assert "--node-rank must be in [0, 1)" in capsys.readouterr().err
