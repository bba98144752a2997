"""The Accelerator in one process, against accelerate 1.16: the README loop, gradient
accumulation, checkpoints that resume exactly, mixed precision on CPU, trackers."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import cove.accelerate
from cove.accelerate import Accelerator, DataLoaderConfiguration, FullyShardedDataParallelPlugin
from cove.accelerate.checkpointing import load_safetensors
from cove.accelerate.tracking import GeneralTracker


def _data(n=40, shuffle=True, batch_size=8):
    torch.manual_seed(1)
    x, y = torch.randn(n, 6), torch.randint(0, 3, (n,))
    return DataLoader(TensorDataset(torch.arange(n), x, y), batch_size=batch_size, shuffle=shuffle)


def _model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(16, 3))


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _readme_loop(accelerator_class, mixed_precision):
    """accelerate's README loop, as written there but for the data's index column."""
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    data = _data()
    accelerator = accelerator_class(mixed_precision=mixed_precision, device_placement=True)
    model, optimizer, data = accelerator.prepare(model, optimizer, data)
    model.train()
    losses = []
    for _epoch in range(3):
        for _, source, targets in data:
            optimizer.zero_grad()
            output = model(source)
            loss = F.cross_entropy(output, targets)
            accelerator.backward(loss)
            optimizer.step()
            losses.append(loss.item())
    assert output.dtype == torch.float32
    return losses, _weights(accelerator.unwrap_model(model))


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_readme_loop_matches_accelerate(hf_accelerate, mixed_precision):
    expected, expected_weights = _readme_loop(hf_accelerate.Accelerator, mixed_precision)
    losses, weights = _readme_loop(Accelerator, mixed_precision)
    assert losses == pytest.approx(expected, abs=1e-6)
    for name, value in weights.items():
        torch.testing.assert_close(value, expected_weights[name], atol=1e-6, rtol=0)


def test_bf16_autocast_on_cpu():
    accelerator = Accelerator(mixed_precision="bf16")
    model = accelerator.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    inside = {}

    def record(module, inputs, output):
        inside["dtype"] = output.dtype

    model[0].register_forward_hook(record)
    out = model(torch.randn(2, 4))
    assert inside["dtype"] == torch.bfloat16 and out.dtype == torch.float32
    with accelerator.autocast():
        assert (torch.randn(2, 3) @ torch.randn(3, 2)).dtype == torch.bfloat16
    # a model's output keeps its type (and attribute access) through the float32 conversion
    from cove.accelerate.utils import convert_to_fp32
    from cove.models.outputs import CausalLMOutputWithPast

    converted = convert_to_fp32(CausalLMOutputWithPast(
        logits=torch.zeros(2, dtype=torch.bfloat16), hidden_states=(torch.zeros(1),)))
    assert isinstance(converted, CausalLMOutputWithPast)
    assert converted.logits.dtype == torch.float32 and len(converted.hidden_states) == 1
    plain = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    assert plain(torch.randn(2, 4)).dtype == torch.float32 and "forward" not in vars(plain)
    inside.clear()
    plain(torch.randn(2, 4))
    assert inside["dtype"] == torch.float32


def _accumulation(accelerator_class, steps):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
    accelerator = accelerator_class(gradient_accumulation_steps=steps)
    model, optimizer, data, scheduler = accelerator.prepare(model, optimizer,
                                                           _data(n=74, batch_size=8), scheduler)
    syncs, lrs = [], []
    for _epoch in range(2):
        for _, source, targets in data:
            with accelerator.accumulate(model):
                loss = F.cross_entropy(model(source), targets)
                accelerator.backward(loss)
                syncs.append(accelerator.sync_gradients)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                lrs.append(scheduler.get_last_lr()[0])
    return syncs, lrs, _weights(model)


def test_gradient_accumulation_matches_accelerate(hf_accelerate):
    syncs, lrs, weights = _accumulation(Accelerator, 4)
    expected_syncs, expected_lrs, expected = _accumulation(hf_accelerate.Accelerator, 4)
    # 10 batches an epoch: windows of 4, the last one cut short by the end of the dataloader
    assert syncs == expected_syncs == (([False] * 3 + [True]) * 2 + [False, True]) * 2
    assert lrs == pytest.approx(expected_lrs)
    for name, value in weights.items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0)


def _resumable_run(tmp_path, accelerator_class, shuffle, save_at, dropout=0.2):
    """Train 2 epochs, saving at step `save_at` of the first; the batches seen after it."""
    model = _model(dropout=dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 3, gamma=0.5)
    accelerator = accelerator_class()
    model, optimizer, data, scheduler = accelerator.prepare(model, optimizer, _data(shuffle=shuffle),
                                                           scheduler)
    after = []
    for epoch in range(2):
        for step, (index, source, targets) in enumerate(data):
            if epoch * len(data) + step >= save_at:
                after.append(index.tolist())
            loss = F.cross_entropy(model(source), targets)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            if epoch == 0 and step + 1 == save_at:
                accelerator.save_state(tmp_path / "checkpoint")
    return after, _weights(model)


def _resume(tmp_path, accelerator_class, shuffle, save_at, skip, batches, dropout=0.2):
    """A new run (other initial weights) that loads the checkpoint and trains `batches` more:
    with `skip` the accelerate way (skip_first_batches), else by iterating the restored
    dataloader."""
    model = _model(seed=99, dropout=dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 3, gamma=0.5)
    accelerator = accelerator_class()
    model, optimizer, data, scheduler = accelerator.prepare(model, optimizer, _data(shuffle=shuffle),
                                                           scheduler)
    accelerator.load_state(tmp_path / "checkpoint")
    seen = []
    loader = accelerator.skip_first_batches(data, save_at) if skip else data
    while len(seen) < batches:
        for index, source, targets in loader:
            seen.append(index.tolist())
            loss = F.cross_entropy(model(source), targets)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        loader = data
    return seen, _weights(model)


@pytest.mark.parametrize(("save_at", "skip"), [(3, False), (3, True), (5, False)])
def test_save_and_load_state_resume_exactly(tmp_path, save_at, skip):
    """Shuffled data and dropout: after load_state the next batches, the random numbers and
    so the final weights are those of the run that never stopped (saved mid-epoch, or on an
    epoch's last batch: 5 batches an epoch)."""
    after, weights = _resumable_run(tmp_path, Accelerator, shuffle=True, save_at=save_at)
    assert sorted(os.listdir(tmp_path / "checkpoint")) == [
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin"]
    assert os.listdir(tmp_path) == ["checkpoint"]  # no temporary folder left behind
    seen, resumed = _resume(tmp_path, Accelerator, shuffle=True, save_at=save_at, skip=skip,
                            batches=len(after))
    assert seen == after
    for name, value in weights.items():
        assert torch.equal(value, resumed[name]), name


def test_resume_with_skip_first_batches_matches_accelerate(tmp_path, hf_accelerate):
    expected_after, expected = _resumable_run(tmp_path / "hf", hf_accelerate.Accelerator,
                                              shuffle=False, save_at=2, dropout=0.0)
    expected_seen, expected_resumed = _resume(tmp_path / "hf", hf_accelerate.Accelerator,
                                              shuffle=False, save_at=2, skip=True,
                                              batches=len(expected_after), dropout=0.0)
    hf_accelerate.state.AcceleratorState._reset_state(reset_partial_state=True)
    after, _ = _resumable_run(tmp_path, Accelerator, shuffle=False, save_at=2, dropout=0.0)
    seen, resumed = _resume(tmp_path, Accelerator, shuffle=False, save_at=2, skip=True,
                            batches=len(after), dropout=0.0)
    assert after == expected_after and seen == expected_seen == after
    for name, value in resumed.items():
        torch.testing.assert_close(value, expected_resumed[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0)


class Counter:
    def __init__(self):
        self.count = 0

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_fp16_scaler_and_registered_objects_round_trip(tmp_path):
    accelerator = Accelerator(mixed_precision="fp16")
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    model = _model()
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="these have not: int"):
        accelerator.register_for_checkpointing(3)
    _, source, targets = next(iter(_data()))
    loss = F.cross_entropy(model(source), targets)
    accelerator.backward(loss)
    norm = accelerator.clip_grad_norm_(model.parameters(), 0.1)  # unscales first
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert 0.1 < float(norm) < 10 and float(grads.norm()) == pytest.approx(0.1, rel=1e-3)
    optimizer.step()
    counter.count = 5
    accelerator.scaler.update(1024.0)
    accelerator.save_state(tmp_path / "ckpt")
    assert "scaler.pt" in os.listdir(tmp_path / "ckpt")
    assert "custom_checkpoint_0.pkl" in os.listdir(tmp_path / "ckpt")
    counter.count, scale = 0, accelerator.scaler.get_scale()
    accelerator.scaler.update(8.0)
    accelerator.load_state(tmp_path / "ckpt")
    assert counter.count == 5 and accelerator.scaler.get_scale() == scale == 1024.0
    other = Accelerator()
    other.prepare(_model(), torch.optim.SGD(_model().parameters(), lr=0.1))
    with pytest.raises(ValueError, match="holds 1 registered objects, 0 are registered now"):
        other.load_state(tmp_path / "ckpt")


def test_fp16_overflow_skips_the_step_and_the_scheduler():
    accelerator = Accelerator(mixed_precision="fp16")
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    before = _weights(model)
    accelerator.backward(model(torch.full((2, 6), 1e4)).sum() * 1e4)  # overflows in fp16
    optimizer.step()
    scheduler.step()
    assert accelerator.optimizer_step_was_skipped
    assert scheduler.get_last_lr() == [0.1]
    assert all(torch.equal(v, before[k]) for k, v in _weights(model).items())


def test_save_model_shards_and_ties(tmp_path):
    accelerator = Accelerator()
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8),
                                torch.nn.Linear(8, 50, bias=False))
    model[2].weight = model[0].weight  # tied, as input and output embeddings often are
    model = accelerator.prepare(model)
    accelerator.save_model(model, tmp_path / "one")
    assert os.listdir(tmp_path / "one") == ["model.safetensors"]
    state = load_safetensors(str(tmp_path / "one" / "model.safetensors"))
    assert torch.equal(state["2.weight"], model[0].weight.detach())
    accelerator.save_model(model, tmp_path / "one", max_shard_size="1KB")
    files = sorted(os.listdir(tmp_path / "one"))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"]  # the single file of before is gone
    index = json.loads((tmp_path / "one" / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"0.weight": "model-00001-of-00002.safetensors",
                                   "1.weight": "model-00002-of-00002.safetensors",
                                   "1.bias": "model-00002-of-00002.safetensors"}
    accelerator.save_model(model, tmp_path / "bin", safe_serialization=False)
    assert os.listdir(tmp_path / "bin") == ["pytorch_model.bin"]
    with pytest.raises(ValueError, match="max_shard_size must be"):
        accelerator.save_model(model, tmp_path / "x", max_shard_size="ten gigs")


def test_collectives_in_one_process():
    accelerator = Accelerator()
    t = torch.arange(6).reshape(3, 2)
    assert torch.equal(accelerator.gather(t), t)
    assert accelerator.gather(torch.tensor(3.0)).shape == (1,)
    assert torch.equal(accelerator.reduce(t, "mean"), t)
    assert torch.equal(accelerator.pad_across_processes(t, dim=1), t)
    assert accelerator.gather_for_metrics(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="reduction must be"):
        accelerator.reduce(t, "avg")
    with accelerator.split_between_processes([1, 2, 3]) as part:
        assert part == [1, 2, 3]
    assert accelerator.is_main_process and accelerator.num_processes == 1
    assert str(accelerator.device) == "cpu" and accelerator.distributed_type == "NO"


def test_set_seed_matches_accelerate(hf_accelerate):
    import accelerate.utils

    from cove.accelerate.utils import set_seed

    hf_accelerate.Accelerator()  # (its device_specific seeding asks the Accelerator's state)
    accelerate.utils.set_seed(5, device_specific=True)
    expected = torch.rand(3)
    set_seed(5, device_specific=True)
    assert torch.equal(torch.rand(3), expected)


def test_clear_errors_for_bad_settings():
    with pytest.raises(ValueError, match="mixed_precision='fp8': expected one of no, fp16, bf16"):
        Accelerator(mixed_precision="fp8")
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be an int >= 1"):
        Accelerator(gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="FSDP2 needs a process group: start the script with"):
        Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin())
    with pytest.raises(ValueError, match="Cove implements FSDP2 only"):
        FullyShardedDataParallelPlugin(fsdp_version=1)
    with pytest.raises(ValueError, match="dispatch_batches is not implemented"):
        DataLoaderConfiguration(dispatch_batches=True)
    with pytest.raises(ValueError, match="not both"):
        Accelerator(split_batches=True, dataloader_config=DataLoaderConfiguration())
    with pytest.raises(TypeError, match="unsupported DeepSpeedPlugin"):
        Accelerator(kwargs_handlers=[type("DeepSpeedPlugin", (), {})()])
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        Accelerator().load_state("/nonexistent/ckpt")


def test_jsonl_tracker_and_tracker_errors(tmp_path):
    accelerator = Accelerator(log_with="jsonl", project_dir=tmp_path)
    accelerator.init_trackers("run", config={"lr": 0.1, "layers": [2, 3]})
    accelerator.log({"loss": torch.tensor(0.5), "note": "x"}, step=1)
    accelerator.log({"loss": 0.25}, step=2)
    accelerator.end_training()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "loss": 0.5, "note": "x"},
                                                    {"step": 2, "loss": 0.25}]
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"lr": 0.1,
                                                                         "layers": [2, 3]}
    with pytest.raises(ValueError, match="needs the tensorboard package"):
        Accelerator(log_with="tensorboard")  # not installed in this environment
    with pytest.raises(ValueError, match="Cove does not ship that tracker"):
        Accelerator(log_with="wandb")
    with pytest.raises(ValueError, match="give the Accelerator a project_dir"):
        Accelerator(log_with="jsonl").init_trackers("run")

    class Mine(GeneralTracker):
        name = "mine"

        def __init__(self):
            self.logged = []

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, values))

    accelerator = Accelerator(log_with=[Mine()])
    accelerator.init_trackers("x")
    accelerator.log({"a": 1}, step=3)
    assert accelerator.get_tracker("mine").logged == [(3, {"a": 1})]


def test_package_is_lazy_and_names_missing_ones():
    probe = ("import sys, cove.accelerate; print('torch' in sys.modules); "
             "from cove.accelerate import PartialState; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True"]
    with pytest.raises(AttributeError, match=r"'cove.accelerate' has no 'DeepSpeedPlugin' yet: "
                       r"accelerate \(1\.\d+"):
        cove.accelerate.DeepSpeedPlugin  # noqa: B018


def test_prepared_objects_are_not_prepared_twice():
    first = Accelerator()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    prepared = first.prepare(model, optimizer, _data(), scheduler)
    second = Accelerator()
    again = second.prepare(*prepared)
    assert all(a is b for a, b in zip(again, prepared, strict=True))
    assert (len(second._models), len(second._optimizers), len(second._dataloaders),
            len(second._schedulers)) == (1, 1, 1, 1)
    assert first.prepare(prepared[2]) is prepared[2] and len(first._dataloaders) == 1
