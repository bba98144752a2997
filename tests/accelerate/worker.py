"""A training script for tests/accelerate/test_distributed.py, run by `cove launch` on 2 CPU
processes (DDP, or FSDP2 with --use-fsdp). It trains, evaluates, checkpoints and resumes, and
the main process saves what it saw (torch.save) to the path given as its argument."""

import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cove.accelerate import Accelerator

OUT = sys.argv[1]
torch.manual_seed(0)
X, Y = torch.randn(64, 6), torch.randint(0, 3, (64,))


def model_and_optimizer():
    # different weights on each process: DDP and FSDP2 both start from process 0's
    torch.manual_seed(int(os.environ["RANK"]))
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def train(accumulation, steps=16, save_at=None, checkpoint=None):
    """`steps` shuffled batches of 4 per process (8 an epoch); returns the global batches
    (indices, in step order), the full weights, and the Accelerator."""
    accelerator = Accelerator(mixed_precision="no", gradient_accumulation_steps=accumulation)
    model, optimizer = model_and_optimizer()
    data = DataLoader(TensorDataset(torch.arange(64), X, Y), batch_size=4, shuffle=True)
    model, optimizer, data = accelerator.prepare(model, optimizer, data)
    if checkpoint:
        accelerator.load_state(checkpoint)
    batches = []
    while len(batches) < steps:
        for index, source, targets in data:
            with accelerator.accumulate(model):
                batches.append(accelerator.gather(index).tolist())
                loss = F.cross_entropy(model(source), targets)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 10.0)  # (norms stay below)
                optimizer.step()
                optimizer.zero_grad()
            if save_at is not None and len(batches) == save_at:
                accelerator.save_state(os.path.join(os.path.dirname(OUT), "checkpoint"))
            if len(batches) == steps:
                break
    return batches, accelerator.get_state_dict(model), accelerator


results = {}
for accumulation in (1, 2):
    results[f"batches_{accumulation}"], results[f"weights_{accumulation}"], acc = train(accumulation)

# evaluation: 21 samples in batches of 4 per process (8 a step): the last step is padded
evaluation = acc.prepare(DataLoader(TensorDataset(torch.arange(21)), batch_size=4))
gathered, words, mine = [], [], []
for (index,) in evaluation:
    mine.append(index.tolist())
    gathered.append(acc.gather_for_metrics(index))
    words += acc.gather_for_metrics([f"w{i}" for i in index.tolist()])
results["eval"] = torch.cat(gathered).tolist()
results["eval_words"] = words
results["eval_shards"] = acc.gather_for_metrics([mine], use_gather_object=True)
ragged = torch.arange(acc.process_index + 2)  # 2 numbers on process 0, 3 on process 1
results["padded"] = acc.gather(acc.pad_across_processes(ragged, pad_index=-1)).tolist()
results["reduced"] = acc.reduce(torch.tensor([1.0, acc.process_index]), "mean").tolist()
try:
    acc.gather(ragged)
except ValueError as e:
    results["gather_error"] = str(e)
with acc.split_between_processes(["a", "b", "c"], apply_padding=True) as part:
    results["split"] = acc.gather_for_metrics([part], use_gather_object=True)
if acc.distributed_type == "MULTI_CPU":  # the oracle, on the same process group
    import accelerate

    oracle = accelerate.Accelerator(cpu=True)
    reference = oracle.prepare(DataLoader(TensorDataset(torch.arange(21)), batch_size=4))
    results["oracle_processes"] = oracle.num_processes
    results["oracle_eval"] = torch.cat([oracle.gather_for_metrics(i) for (i,) in reference]).tolist()
    results["oracle_shards"] = oracle.gather_for_metrics([[i.tolist() for (i,) in reference]],
                                                         use_gather_object=True)
results["launch_precision"] = Accelerator().mixed_precision  # COVE_MIXED_PRECISION, if set
results["distributed_type"] = acc.distributed_type.value

# checkpoint mid-epoch (step 5 of 8), then a new run resumes from it
results["full_run"], results["full_weights"], _ = train(1, save_at=5)
results["resumed_run"], results["resumed_weights"], acc = train(
    1, steps=11, checkpoint=os.path.join(os.path.dirname(OUT), "checkpoint"))
results["checkpoint_files"] = sorted(os.listdir(os.path.join(os.path.dirname(OUT), "checkpoint")))
if acc.is_main_process:
    torch.save(results, OUT)
acc.end_training()
