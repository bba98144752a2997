"""`Accelerator`: one training loop for one process, many processes (DDP) or FSDP2, with
mixed precision and gradient accumulation, written as with Hugging Face accelerate:

    accelerator = Accelerator(mixed_precision="bf16")
    model, optimizer, data = accelerator.prepare(model, optimizer, data)
    for source, targets in data:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(source), targets)
        accelerator.backward(loss)
        optimizer.step()

Launched by `cove launch` (or torchrun), each process trains on its shard of every dataloader
and the gradients are averaged between them. Defaults come from the environment `cove launch`
sets: COVE_MIXED_PRECISION, COVE_USE_FSDP, COVE_USE_CPU.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from cove.accelerate import checkpointing, operations
from cove.accelerate.data_loader import DataLoaderShard, prepare_data_loader, skip_first_batches
from cove.accelerate.environment import env_flag
from cove.accelerate.fsdp import fully_shard_model
from cove.accelerate.optimizer import AcceleratedOptimizer, AcceleratedScheduler
from cove.accelerate.plugins import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    FullyShardedDataParallelPlugin,
    GradScalerKwargs,
    InitProcessGroupKwargs,
)
from cove.accelerate.state import (
    AcceleratorState,
    DistributedType,
    GradientState,
    PartialState,
)
from cove.accelerate.tracking import GeneralTracker, check_log_with, make_tracker

_PRECISIONS = ("no", "fp16", "bf16")
_FORWARD_MARK = "_cove_mixed_precision_forward"


class Accelerator:
    """Prepares a model, optimizers, dataloaders and schedulers for the run this process is in.

    `mixed_precision`: "no", "fp16" (autocast, and a GradScaler for the loss; on CPU too) or
    "bf16" (autocast, on CPU too); default COVE_MIXED_PRECISION, else "no".
    `gradient_accumulation_steps`: `backward` divides the loss by it and, inside
    `accumulate(model)`, the optimizer steps on the last micro-batch of each window (and at
    the end of a dataloader). `device_placement`: models, optimizer states and batches go to
    `device`. `cpu`: stay on CPU. `split_batches`, `even_batches` (or `dataloader_config`):
    how dataloaders are sharded (see `DataLoaderConfiguration`).
    `fsdp_plugin`: shard the model with FSDP2 (`FullyShardedDataParallelPlugin()`; also when
    COVE_USE_FSDP is set, as `cove launch --use-fsdp` does); otherwise models with trainable
    parameters are wrapped in DistributedDataParallel when there are several processes.
    `log_with`: "jsonl", "tensorboard", "all", or GeneralTracker objects, writing under
    `project_dir`. `step_scheduler_with_optimizer`: prepared schedulers step only when the
    optimizer does. `kwargs_handlers`: DistributedDataParallelKwargs, GradScalerKwargs,
    InitProcessGroupKwargs.
    """

    def __init__(self, device_placement: bool = True, split_batches: bool = False,
                 mixed_precision: str | None = None, gradient_accumulation_steps: int = 1,
                 cpu: bool = False, dataloader_config: DataLoaderConfiguration | None = None, *,
                 fsdp_plugin: FullyShardedDataParallelPlugin | None = None,
                 log_with: Any = None, project_dir: str | os.PathLike | None = None,
                 step_scheduler_with_optimizer: bool = True,
                 kwargs_handlers: list[Any] | None = None, even_batches: bool = True) -> None:
        if mixed_precision is None:
            mixed_precision = os.environ.get("COVE_MIXED_PRECISION") or "no"
        mixed_precision = str(getattr(mixed_precision, "value", mixed_precision)).lower()
        if mixed_precision not in _PRECISIONS:
            raise ValueError(f"mixed_precision={mixed_precision!r}: expected one of "
                             f"{', '.join(_PRECISIONS)}")
        if (not isinstance(gradient_accumulation_steps, int)
                or isinstance(gradient_accumulation_steps, bool) or gradient_accumulation_steps < 1):
            raise ValueError(f"gradient_accumulation_steps must be an int >= 1, got "
                             f"{gradient_accumulation_steps!r}")
        if dataloader_config is None:
            dataloader_config = DataLoaderConfiguration(split_batches=split_batches,
                                                        even_batches=even_batches)
        elif split_batches or not even_batches:
            raise ValueError("give split_batches / even_batches either as arguments or in "
                             "dataloader_config, not both")
        self.dataloader_config = dataloader_config
        handlers: dict[type, Any] = {}
        for handler in kwargs_handlers or []:
            kind = type(handler)
            if kind not in (DistributedDataParallelKwargs, GradScalerKwargs,
                            InitProcessGroupKwargs):
                raise TypeError(f"kwargs_handlers: unsupported {kind.__name__}; Cove takes "
                                f"DistributedDataParallelKwargs, GradScalerKwargs, "
                                f"InitProcessGroupKwargs")
            if kind in handlers:
                raise ValueError(f"kwargs_handlers: {kind.__name__} given twice")
            handlers[kind] = handler
        self.ddp_handler = handlers.get(DistributedDataParallelKwargs)
        self.scaler_handler = handlers.get(GradScalerKwargs)
        group = handlers.get(InitProcessGroupKwargs, InitProcessGroupKwargs())
        self._partial = PartialState(cpu=cpu, backend=group.backend, timeout=group.timeout)
        if fsdp_plugin is None and env_flag("COVE_USE_FSDP"):
            fsdp_plugin = FullyShardedDataParallelPlugin()
        if fsdp_plugin is not None and not isinstance(fsdp_plugin, FullyShardedDataParallelPlugin):
            raise TypeError(f"fsdp_plugin must be a FullyShardedDataParallelPlugin, got "
                            f"{type(fsdp_plugin).__name__}")
        if fsdp_plugin is not None and not dist.is_initialized():
            raise ValueError("FSDP2 needs a process group: start the script with "
                             "`cove launch --use-fsdp ...` (or torchrun)")
        self.state = AcceleratorState(self._partial, mixed_precision, fsdp_plugin)
        self.device_placement = device_placement
        self.step_scheduler_with_optimizer = step_scheduler_with_optimizer
        self.gradient_state = GradientState(num_steps=gradient_accumulation_steps)
        self.scaler = None
        if mixed_precision == "fp16":
            kwargs = self.scaler_handler.to_kwargs() if self.scaler_handler else {}
            self.scaler = torch.amp.GradScaler(self.device.type, **kwargs)
        self.project_dir = os.fspath(project_dir) if project_dir is not None else None
        self.log_with = check_log_with(log_with)
        self.trackers: list[GeneralTracker] = []
        self.step = 0  # micro-batches into the current accumulation window
        self._models: list[torch.nn.Module] = []
        self._optimizers: list[AcceleratedOptimizer] = []
        self._schedulers: list[AcceleratedScheduler] = []
        self._dataloaders: list[DataLoaderShard] = []
        self._custom_objects: list[Any] = []

    # -- where this process is -------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._partial.device

    @property
    def process_index(self) -> int:
        return self._partial.process_index

    @property
    def local_process_index(self) -> int:
        return self._partial.local_process_index

    @property
    def num_processes(self) -> int:
        return self._partial.num_processes

    @property
    def is_main_process(self) -> bool:
        return self._partial.is_main_process

    @property
    def is_local_main_process(self) -> bool:
        return self._partial.is_local_main_process

    @property
    def is_last_process(self) -> bool:
        return self._partial.is_last_process

    @property
    def use_distributed(self) -> bool:
        return self._partial.use_distributed

    @property
    def distributed_type(self) -> DistributedType:
        return self.state.distributed_type

    @property
    def is_fsdp2(self) -> bool:
        return self.state.fsdp_plugin is not None

    @property
    def mixed_precision(self) -> str:
        return self.state.mixed_precision

    @property
    def split_batches(self) -> bool:
        return self.dataloader_config.split_batches

    @property
    def even_batches(self) -> bool:
        return self.dataloader_config.even_batches

    @property
    def logging_dir(self) -> str | None:
        return self.project_dir

    def wait_for_everyone(self) -> None:
        """A barrier: every process waits here until all have reached it."""
        self._partial.wait_for_everyone()

    def main_process_first(self) -> contextlib.AbstractContextManager:
        """The main process runs the block first (e.g. to build a dataset cache); others after."""
        return self._partial.main_process_first()

    def local_main_process_first(self) -> contextlib.AbstractContextManager:
        """Each machine's main process runs the block first; the others after."""
        return self._partial.local_main_process_first()

    def split_between_processes(self, inputs: Any, apply_padding: bool = False
                                ) -> contextlib.AbstractContextManager:
        """This process's share of `inputs` (see `PartialState.split_between_processes`)."""
        return self._partial.split_between_processes(inputs, apply_padding=apply_padding)

    def on_main_process(self, function: Callable) -> Callable:
        """Decorator: `function` runs on the main process only."""
        return self._partial.on_main_process(function)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`print`, on each machine's main process only."""
        self._partial.print(*args, **kwargs)

    # -- prepare ---------------------------------------------------------------------------

    def prepare(self, *args: Any, device_placement: list[bool] | None = None) -> Any:
        """Models, optimizers, dataloaders and schedulers ready for this run, in the order
        given (one object comes back alone). Other objects come back unchanged."""
        if device_placement is None:
            device_placement = [None] * len(args)
        elif len(device_placement) != len(args):
            raise ValueError(f"device_placement needs one entry per object: {len(args)} objects, "
                             f"{len(device_placement)} entries")
        result = list(args)
        models = [i for i, a in enumerate(args) if isinstance(a, torch.nn.Module)]
        optimizers = [i for i, a in enumerate(args) if isinstance(a, torch.optim.Optimizer)
                      and not isinstance(a, AcceleratedOptimizer)]
        if self.is_fsdp2 and len(models) > 1:
            raise ValueError("FSDP2: prepare one model per Accelerator")
        for i in models:  # first: FSDP2 replaces the parameters the optimizers hold
            result[i] = self.prepare_model(args[i], device_placement=device_placement[i],
                                           _optimizers=[args[j] for j in optimizers])
        for i, obj in enumerate(args):
            if isinstance(obj, torch.optim.Optimizer):
                result[i] = self.prepare_optimizer(obj, device_placement=device_placement[i])
            elif isinstance(obj, torch.utils.data.DataLoader):
                result[i] = self.prepare_data_loader(obj, device_placement=device_placement[i])
        for i, obj in enumerate(args):  # last: they attach to the prepared optimizers
            if isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, AcceleratedScheduler)):
                result[i] = self.prepare_scheduler(obj)
        return result[0] if len(result) == 1 else tuple(result)

    def prepare_model(self, model: torch.nn.Module, device_placement: bool | None = None,
                      evaluation_mode: bool = False, *,
                      _optimizers: list[torch.optim.Optimizer] = ()) -> torch.nn.Module:
        """`model` on the device, under autocast if mixed precision is on, and wrapped for the
        run: DDP with several processes (unless `evaluation_mode`), or sharded by FSDP2."""
        from torch.distributed.fsdp import FSDPModule

        if any(model is m for m in self._models):
            return model
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, FSDPModule)):
            self._models.append(model)  # prepared already (by another Accelerator)
            return model
        if device_placement is None:
            device_placement = self.device_placement
        if device_placement:
            model = model.to(self.device)
        if self.mixed_precision != "no" and not hasattr(model, _FORWARD_MARK):
            self._autocast_forward(model)
        if self.is_fsdp2:
            model = fully_shard_model(model, self.state.fsdp_plugin, self.device, _optimizers)
        elif (self.use_distributed and not evaluation_mode
              and any(p.requires_grad for p in model.parameters())):
            kwargs = self.ddp_handler.to_kwargs() if self.ddp_handler else {}
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                              output_device=ids and ids[0],
                                                              **kwargs)
        self._models.append(model)
        return model

    def _autocast_forward(self, model: torch.nn.Module) -> None:
        """The model's forward under autocast, its fp16/bf16 outputs given back as float32
        (so that losses are computed in float32, as accelerate does)."""
        forward = model.forward
        bound = getattr(forward, "__self__", None) is model
        func = forward.__func__ if bound else forward
        autocast = self.autocast

        @functools.wraps(func)
        def mixed_precision_forward(*args: Any, **kwargs: Any) -> Any:
            with autocast():
                out = func(*args, **kwargs)
            return operations.convert_to_fp32(out)

        # bound to the model, so that copies of the model (deepcopy) call their own forward
        model.forward = types.MethodType(mixed_precision_forward, model) if bound \
            else mixed_precision_forward
        setattr(model, _FORWARD_MARK, forward)

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer,
                          device_placement: bool | None = None) -> AcceleratedOptimizer:
        """`optimizer` stepping only on synchronised steps, through the scaler under fp16."""
        if isinstance(optimizer, AcceleratedOptimizer):
            if all(optimizer is not o for o in self._optimizers):
                self._optimizers.append(optimizer)
            return optimizer
        if self.is_fsdp2 and self._models:
            from torch.distributed.tensor import DTensor

            if any(not isinstance(p, DTensor) for g in optimizer.param_groups for p in g["params"]):
                raise ValueError("this optimizer holds the model's parameters from before FSDP2 "
                                 "sharded them: pass it to prepare() together with the model, "
                                 "or make it from the prepared model")
        if device_placement is None:
            device_placement = self.device_placement
        wrapped = AcceleratedOptimizer(optimizer, self.gradient_state,
                                       device=self.device if device_placement else None,
                                       scaler=self.scaler,
                                       sync_found_inf=self.is_fsdp2 and self.use_distributed)
        self._optimizers.append(wrapped)
        return wrapped

    def prepare_scheduler(self, scheduler: Any) -> AcceleratedScheduler:
        """`scheduler` stepping with its (prepared) optimizer."""
        if isinstance(scheduler, AcceleratedScheduler):
            if all(scheduler is not s for s in self._schedulers):
                self._schedulers.append(scheduler)
            return scheduler
        mine = [o for o in self._optimizers
                if scheduler.optimizer is o or scheduler.optimizer is o.optimizer]
        wrapped = AcceleratedScheduler(scheduler, mine or self._optimizers, self.gradient_state,
                                       num_processes=self.num_processes,
                                       step_with_optimizer=self.step_scheduler_with_optimizer,
                                       split_batches=self.split_batches)
        self._schedulers.append(wrapped)
        return wrapped

    def prepare_data_loader(self, data_loader: torch.utils.data.DataLoader,
                            device_placement: bool | None = None) -> DataLoaderShard:
        """`data_loader` sharded for this process, its batches on the device."""
        if isinstance(data_loader, DataLoaderShard):  # sharded already: never twice
            if all(data_loader is not d for d in self._dataloaders):
                self._dataloaders.append(data_loader)
            return data_loader
        if device_placement is None:
            device_placement = self.device_placement
        config = self.dataloader_config
        prepared = prepare_data_loader(
            data_loader, device=self.device, num_processes=self.num_processes,
            process_index=self.process_index, split_batches=config.split_batches,
            put_on_device=device_placement, even_batches=config.even_batches,
            non_blocking=config.non_blocking, gradient_state=self.gradient_state)
        self._dataloaders.append(prepared)
        return prepared

    # -- the training step -----------------------------------------------------------------

    @property
    def sync_gradients(self) -> bool:
        """Whether this micro-batch ends an accumulation window (the optimizer will step)."""
        return self.gradient_state.sync_gradients

    @sync_gradients.setter
    def sync_gradients(self, value: bool) -> None:
        self.gradient_state.sync_gradients = value

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.gradient_state.num_steps

    @gradient_accumulation_steps.setter
    def gradient_accumulation_steps(self, value: int) -> None:
        self.gradient_state.num_steps = value

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """Whether an optimizer skipped its last step (fp16 gradients overflowed)."""
        return any(opt.step_was_skipped for opt in self._optimizers)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """`loss.backward()`, divided by the accumulation steps and scaled under fp16."""
        loss = loss / self.gradient_accumulation_steps
        if self.scaler is not None:
            self.scaler.scale(loss).backward(**kwargs)
        else:
            loss.backward(**kwargs)

    def _do_sync(self) -> None:
        state = self.gradient_state
        if state.sync_with_dataloader and state.end_of_dataloader:
            self.step = 0
            state._set_sync_gradients(True)
        else:
            self.step += 1
            state._set_sync_gradients(self.step % state.num_steps == 0)

    @contextlib.contextmanager
    def accumulate(self, *models: torch.nn.Module) -> Iterator[None]:
        """One micro-batch of gradient accumulation: sets `sync_gradients`, and keeps DDP or
        FSDP2 from communicating gradients until the window's last micro-batch."""
        self._do_sync()
        with contextlib.ExitStack() as stack:
            if not self.sync_gradients:
                for model in models:
                    stack.enter_context(self.no_sync(model))
            yield

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module) -> Iterator[None]:
        """Gradients of backward passes in this block stay local to the process."""
        from torch.distributed.fsdp import FSDPModule

        if isinstance(model, FSDPModule):
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            with model.no_sync():
                yield
        else:
            yield

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision autocast of this accelerator (nothing with "no")."""
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.mixed_precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def unscale_gradients(self, optimizer: Any = None) -> None:
        """Under fp16, divide the gradients by the loss scale (once per step)."""
        if self.scaler is None:
            return
        optimizers = (self._optimizers if optimizer is None else
                      optimizer if isinstance(optimizer, (list, tuple)) else [optimizer])
        for opt in optimizers:
            if not isinstance(opt, AcceleratedOptimizer):
                raise TypeError("unscale_gradients takes optimizers returned by prepare()")
            opt.unscale_()

    def clip_grad_norm_(self, parameters: Any, max_norm: float,
                        norm_type: float = 2.0) -> torch.Tensor:
        """Clip the gradients' total norm (over all processes' shards under FSDP2) to
        `max_norm`, after unscaling them under fp16. Returns the norm before clipping."""
        from torch.distributed.tensor import DTensor

        self.unscale_gradients()
        groups: dict[Any, list[torch.Tensor]] = {}
        for p in parameters:
            if p.grad is not None:
                mesh = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
                groups.setdefault(mesh, []).append(p)
        norms = []
        for params in groups.values():
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type)
            norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        if not norms:
            return torch.tensor(0.0)
        total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
        for params in groups.values():
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    def clip_grad_value_(self, parameters: Any, clip_value: float) -> None:
        """Clip every gradient to [-clip_value, clip_value], after unscaling under fp16."""
        self.unscale_gradients()
        torch.nn.utils.clip_grad_value_(parameters, clip_value)

    # -- collectives -----------------------------------------------------------------------

    def gather(self, tensor: Any) -> Any:
        """Every process's tensors concatenated on the first dimension, on every process."""
        return operations.gather(tensor)

    def gather_for_metrics(self, input_data: Any, use_gather_object: bool = False) -> Any:
        """`gather`, without the samples the last batch repeated to even out the processes:
        over an evaluation loop, exactly one result per sample of the dataset. Objects other
        than tensors (or with `use_gather_object`) are gathered as pickled lists."""
        try:
            operations.recursively_apply(lambda t: t, input_data, error_on_other_type=True)
            all_tensors = True
        except TypeError:
            all_tensors = False
        use_gather_object = use_gather_object or not all_tensors
        data = (operations.gather_object(input_data) if use_gather_object
                else operations.gather(input_data))
        state = self.gradient_state
        if not state.end_of_dataloader or state.remainder <= 0:
            return data
        if use_gather_object:
            return data[: state.remainder]
        return operations.recursively_apply(lambda t: t[: state.remainder], data)

    def reduce(self, tensor: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
        """Every process's tensors summed ("sum") or averaged ("mean"), on every process."""
        return operations.reduce(tensor, reduction, scale)

    def pad_across_processes(self, tensor: Any, dim: int = 0, pad_index: int = 0,
                             pad_first: bool = False) -> Any:
        """Tensors padded along `dim` to the longest any process has, ready to `gather`."""
        return operations.pad_across_processes(tensor, dim=dim, pad_index=pad_index,
                                               pad_first=pad_first)

    # -- models and checkpoints ------------------------------------------------------------

    def unwrap_model(self, model: torch.nn.Module, keep_fp32_wrapper: bool = True,
                     keep_torch_compile: bool = True) -> torch.nn.Module:
        """The model inside DDP (and torch.compile unless `keep_torch_compile`); without
        `keep_fp32_wrapper`, its own forward again instead of the mixed-precision one."""
        while True:
            if isinstance(model, torch.nn.parallel.DistributedDataParallel):
                model = model.module
            elif not keep_torch_compile and hasattr(model, "_orig_mod"):
                model = model._orig_mod
            else:
                break
        inner = getattr(model, "_orig_mod", model)
        if not keep_fp32_wrapper and hasattr(inner, _FORWARD_MARK):
            original = getattr(inner, _FORWARD_MARK)
            if getattr(original, "__self__", None) is inner:
                del inner.forward  # the class's forward shows through again
            else:
                inner.forward = original
            delattr(inner, _FORWARD_MARK)
        return model

    def get_state_dict(self, model: torch.nn.Module, unwrap: bool = True) -> dict:
        """The model's full weights. Under FSDP2 every process must call this; process 0 gets
        the weights (gathered on CPU), the others an empty dict."""
        return checkpointing.model_state_dict(self.unwrap_model(model) if unwrap else model)

    def save(self, obj: Any, f: str | os.PathLike) -> None:
        """`torch.save(obj, f)` by the main process only, written atomically."""
        if self.is_main_process:
            checkpointing.torch_save(obj, os.fspath(f))

    def save_model(self, model: torch.nn.Module, save_directory: str | os.PathLike,
                   max_shard_size: int | str = "10GB", safe_serialization: bool = True) -> None:
        """The model's full weights in `save_directory` as `from_pretrained` reads them:
        model.safetensors, or shards of at most `max_shard_size` and an index. Every process
        must call it (FSDP2 gathers); the main process writes."""
        checkpointing.parse_size(max_shard_size)  # a bad size fails before any gathering
        state = self.get_state_dict(model)
        if self.is_main_process:
            checkpointing.save_weights(state, os.fspath(save_directory), max_shard_size,
                                       safe_serialization)
        self.wait_for_everyone()

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Objects with `state_dict`/`load_state_dict` that `save_state` saves and
        `load_state` restores, in this order."""
        wrong = [type(o).__name__ for o in objects
                 if not (callable(getattr(o, "state_dict", None))
                         and callable(getattr(o, "load_state_dict", None)))]
        if wrong:
            raise TypeError(f"register_for_checkpointing needs objects with state_dict and "
                            f"load_state_dict; these have not: {', '.join(wrong)}")
        self._custom_objects.extend(objects)

    def _fsdp_model(self) -> torch.nn.Module | None:
        return self._models[0] if self.is_fsdp2 and self._models else None

    def save_state(self, output_dir: str | os.PathLike, safe_serialization: bool = True) -> str:
        """Everything needed to resume exactly into `output_dir`: weights, optimizers,
        schedulers, the grad scaler, every process's random states, where each prepared
        dataloader is, and the registered objects (see cove.accelerate.checkpointing).
        Every process must call it. Returns the folder."""
        if output_dir is None:
            raise ValueError("save_state needs an output_dir")
        output_dir = os.path.expanduser(os.fspath(output_dir))
        main = self.is_main_process
        weights = [self.get_state_dict(m) for m in self._models]  # (collective under FSDP2)
        optimizers = [checkpointing.optimizer_state_dict(self._fsdp_model(), o.optimizer)
                      for o in self._optimizers]
        with checkpointing.atomic_folder(output_dir, main) as folder:
            if main:
                for i, state in enumerate(weights):
                    name = (_numbered("model", i, ".safetensors") if safe_serialization
                            else _numbered("pytorch_model", i))
                    checkpointing.save_weights(state, folder, None, safe_serialization, name=name)
                for i, state in enumerate(optimizers):
                    checkpointing.torch_save(state, os.path.join(folder, _numbered("optimizer", i)))
                for i, scheduler in enumerate(self._schedulers):
                    checkpointing.torch_save(scheduler.state_dict(),
                                             os.path.join(folder, _numbered("scheduler", i)))
                if self.scaler is not None:
                    checkpointing.torch_save(self.scaler.state_dict(),
                                             os.path.join(folder, "scaler.pt"))
                for i, obj in enumerate(self._custom_objects):
                    checkpointing.torch_save(obj.state_dict(),
                                             os.path.join(folder, f"custom_checkpoint_{i}.pkl"))
            states = {**checkpointing.rng_state(), "step": self.step,
                      "dataloaders": [d.state_dict() for d in self._dataloaders]}
            checkpointing.torch_save(states, os.path.join(
                folder, f"random_states_{self.process_index}.pkl"))
        return output_dir

    def load_state(self, input_dir: str | os.PathLike, **load_model_kwargs: Any) -> None:
        """Restore what `save_state` wrote into the prepared objects: the next batch of each
        dataloader, the next random numbers and the weights are those of the saved run.
        `strict=False` lets model weights be missing or extra. Every process must call it."""
        input_dir = os.path.expanduser(os.fspath(input_dir))
        if not os.path.isdir(input_dir):
            raise FileNotFoundError(f"load_state: no checkpoint folder {input_dir}")
        unknown = set(load_model_kwargs) - {"strict"}
        if unknown:
            raise TypeError(f"load_state got unexpected arguments: {', '.join(sorted(unknown))}")
        for i, model in enumerate(self._models):
            path = os.path.join(input_dir, _numbered("model", i, ".safetensors"))
            if os.path.exists(path):
                state = checkpointing.load_safetensors(path)
            else:
                path = os.path.join(input_dir, _numbered("pytorch_model", i))
                state = torch.load(path, map_location="cpu", weights_only=True)
            unwrapped = self.unwrap_model(model)
            if load_model_kwargs.get("strict", True) or self.is_fsdp2:
                checkpointing.load_model_state_dict(unwrapped, state)
            else:
                unwrapped.load_state_dict(state, strict=False)
        for i, opt in enumerate(self._optimizers):
            state = torch.load(os.path.join(input_dir, _numbered("optimizer", i)),
                               map_location="cpu" if self.is_fsdp2 else self.device,
                               weights_only=True)
            checkpointing.load_optimizer_state_dict(self._fsdp_model(), opt.optimizer, state)
        for i, scheduler in enumerate(self._schedulers):
            scheduler.load_state_dict(torch.load(os.path.join(input_dir, _numbered("scheduler", i)),
                                                 weights_only=False))
        if self.scaler is not None:
            self.scaler.load_state_dict(torch.load(os.path.join(input_dir, "scaler.pt"),
                                                   weights_only=True))
        found = len([f for f in os.listdir(input_dir) if f.startswith("custom_checkpoint_")])
        if found != len(self._custom_objects):
            raise ValueError(f"load_state: {input_dir} holds {found} registered objects, "
                             f"{len(self._custom_objects)} are registered now")
        for i, obj in enumerate(self._custom_objects):
            obj.load_state_dict(torch.load(os.path.join(input_dir, f"custom_checkpoint_{i}.pkl"),
                                           weights_only=False))
        path = os.path.join(input_dir, f"random_states_{self.process_index}.pkl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"load_state: {path} is missing (was the checkpoint saved "
                                    f"with fewer processes?)")
        states = torch.load(path, weights_only=False)  # our own file: RNG states are pickled
        loaders = states.get("dataloaders", [])
        if len(loaders) != len(self._dataloaders):
            raise ValueError(f"load_state: the checkpoint has {len(loaders)} dataloaders, "
                             f"{len(self._dataloaders)} are prepared now")
        for loader, state in zip(self._dataloaders, loaders, strict=True):
            loader.load_state_dict(state)
        self.step = states.get("step", 0)
        checkpointing.set_rng_state(states)

    def skip_first_batches(self, dataloader: Any, num_batches: int = 0) -> Any:
        """`dataloader` starting its next pass at batch `num_batches` of the epoch."""
        return skip_first_batches(dataloader, num_batches)

    # -- trackers and the end --------------------------------------------------------------

    def init_trackers(self, project_name: str, config: dict | None = None,
                      init_kwargs: dict | None = None) -> None:
        """Start the `log_with` trackers for `project_name` (main process only), recording
        `config`. `init_kwargs` maps a tracker name to its constructor's arguments."""
        if not self.is_main_process:
            return
        for entry in self.log_with:
            tracker = entry if isinstance(entry, GeneralTracker) else make_tracker(
                entry, project_name, self.logging_dir, init_kwargs)
            if config is not None:
                tracker.store_init_configuration(config)
            self.trackers.append(tracker)

    def get_tracker(self, name: str, unwrap: bool = False) -> Any:
        """The started tracker called `name` (its writer with `unwrap`)."""
        for tracker in self.trackers:
            if tracker.name == name:
                return tracker.tracker if unwrap else tracker
        if not self.is_main_process:
            return GeneralTracker()  # trackers live on the main process; elsewhere logs vanish
        raise ValueError(f"no started tracker {name!r} (started: "
                         f"{', '.join(t.name for t in self.trackers) or 'none'})")

    def log(self, values: dict, step: int | None = None, log_kwargs: dict | None = None) -> None:
        """Record `values` in every tracker (main process only)."""
        for tracker in self.trackers:
            tracker.log(values, step=step, **(log_kwargs or {}).get(tracker.name, {}))

    def end_training(self) -> None:
        """Close the trackers and end the process group (every process must call it)."""
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
        self._models.clear()  # our references to DDP/FSDP models: gone before the group is
        self._optimizers.clear()
        gc.collect()
        self._partial.destroy_process_group()


def _numbered(stem: str, i: int, ext: str = ".bin") -> str:
    return f"{stem}{ext}" if i == 0 else f"{stem}_{i}{ext}"
