"""Starting processes: `notebook_launcher` (a function on N processes, from a notebook) and
the torchrun command line behind `cove launch`."""

from __future__ import annotations

import gc
import os
import socket
import sys
from collections.abc import Callable

_PRECISIONS = ("no", "fp16", "bf16")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_precision(mixed_precision: str | None) -> None:
    if mixed_precision is not None and mixed_precision not in _PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r}: expected one of "
                         f"{', '.join(_PRECISIONS)}")


def _run_process(index: int, function: Callable, args: tuple, env: dict[str, str],
                 nprocs: int, node_rank: int) -> None:
    import torch.distributed as dist

    from cove.accelerate.state import PartialState

    os.environ.update(env)
    os.environ.update(RANK=str(node_rank * nprocs + index), LOCAL_RANK=str(index))
    PartialState._reset_state()  # a forked child must make its own process group
    try:
        function(*args)
    finally:
        if dist.is_initialized():  # (a forked child skips atexit: end the group here)
            gc.collect()
            dist.destroy_process_group()
        PartialState._reset_state()


def notebook_launcher(function: Callable, args: tuple = (), num_processes: int | None = None,
                      mixed_precision: str = "no", use_port: int | str | None = None,
                      master_addr: str = "127.0.0.1", node_rank: int = 0,
                      num_nodes: int = 1) -> None:
    """Run `function(*args)` on `num_processes` forked processes of this machine (default:
    one per GPU, else one), each an `Accelerator`-ready rank of one process group (gloo on
    CPU, NCCL on GPUs). One process runs it here. `use_port`: the group's port (default: a
    free one). Call it before making any Accelerator or touching CUDA in this process."""
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    _check_precision(mixed_precision)
    if num_processes is None:
        num_processes = torch.cuda.device_count() or 1
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}")
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise ValueError(f"node_rank must be in [0, num_nodes={num_nodes}), got {node_rank}")
    env = {"COVE_MIXED_PRECISION": mixed_precision}
    if num_processes == 1 and num_nodes == 1:
        saved = os.environ.get("COVE_MIXED_PRECISION")
        os.environ.update(env)
        try:
            function(*args)
        finally:
            if saved is None:
                os.environ.pop("COVE_MIXED_PRECISION")
            else:
                os.environ["COVE_MIXED_PRECISION"] = saved
        return
    if dist.is_available() and dist.is_initialized():
        raise RuntimeError("notebook_launcher: this process is already in a process group; "
                           "launch before making an Accelerator")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError("notebook_launcher: CUDA is already initialised in this process and "
                           "cannot be forked: restart the notebook and launch before using CUDA")
    if num_nodes > 1 and use_port is None:
        raise ValueError("notebook_launcher on several nodes needs use_port (the same on each)")
    env.update(WORLD_SIZE=str(num_processes * num_nodes), LOCAL_WORLD_SIZE=str(num_processes),
               MASTER_ADDR=master_addr, MASTER_PORT=str(use_port or _free_port()))
    mp.start_processes(_run_process, args=(function, args, env, num_processes, node_rank),
                       nprocs=num_processes, start_method="fork")


def torchrun_command(script: str, script_args: list[str], nproc_per_node: int | None = None,
                     nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None,
                     master_port: int | None = None, mixed_precision: str | None = None,
                     use_fsdp: bool = False, cpu: bool = False,
                     ) -> tuple[list[str], dict[str, str]]:
    """The `torch.distributed.run` command and environment that run `script` as `cove launch`
    does: one process per GPU by default (one on a CPU-only machine or with `cpu`), the
    Accelerator's defaults in COVE_* variables, OpenMP threads shared out between processes."""
    if not os.path.isfile(script):
        raise FileNotFoundError(f"no script {script}")
    _check_precision(mixed_precision)
    if nproc_per_node is None:
        import torch

        nproc_per_node = 1 if cpu else (torch.cuda.device_count() or 1)
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"--nproc-per-node and --nnodes must be >= 1, got {nproc_per_node} "
                         f"and {nnodes}")
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"--node-rank must be in [0, {nnodes}), got {node_rank}")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes > 1 or master_addr or master_port:
        if nnodes > 1 and not master_addr:
            raise ValueError("--nnodes > 1 needs --master-addr (node 0's address, reachable "
                             "from every node) and the same --master-port on every node")
        command += [f"--nnodes={nnodes}", f"--node-rank={node_rank}",
                    f"--master-addr={master_addr or '127.0.0.1'}",
                    f"--master-port={master_port or 29500}"]
    else:
        command.append("--standalone")  # one machine: torchrun picks a free port
    command += [script, *script_args]
    env = dict(os.environ)
    if mixed_precision is not None:
        env["COVE_MIXED_PRECISION"] = mixed_precision
    if use_fsdp:
        env["COVE_USE_FSDP"] = "1"
    if cpu:
        env["COVE_USE_CPU"] = "1"
    # torchrun would set 1 thread per process (and warn): share the cores out instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, _cpu_count() // nproc_per_node)))
    return command, env
