"""The base of every model: from_pretrained, save_pretrained, push_to_hub, weight tying.

Loading builds the model with its parameters on the meta device (no memory, no random
init), then assigns the checkpoint's tensors in place: peak memory stays near one copy of the
weights. Only parameters the checkpoint lacks are allocated and initialised.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from cove.models import checkpoint as ckpt
from cove.models.configuration import HUB_KWARGS, PretrainedConfig
from cove.models.files import resolve_file
from cove.models.layers import init_weights

log = logging.getLogger("cove.models")

_DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "fp32": torch.float32, "fp16": torch.float16,
                "bf16": torch.bfloat16}


def as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
        raise ValueError(f"Unsupported dtype {dtype}: model weights are float32, bfloat16 or "
                         "float16.")
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"Unsupported dtype {dtype!r}: use float32, bfloat16 or float16.")
    return _DTYPE_NAMES[name]


@contextmanager
def parameters_on_meta():
    """Create parameters on the meta device (buffers stay real: they are small).

    torch.nn.init's functions leave meta tensors alone meanwhile: there is nothing to
    initialise, and torch's meta kernel for normal_ imports sympy and more on first use
    (over a second and ~70 MB in a fresh process).
    """
    original = nn.Module.register_parameter
    inits = {name: fn for name, fn in vars(nn.init).items()
             if name.endswith("_") and not name.startswith("_") and callable(fn)}

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    def skip_meta(fn):
        @functools.wraps(fn)
        def init(tensor, *args, **kwargs):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
                return tensor
            return fn(tensor, *args, **kwargs)
        return init

    nn.Module.register_parameter = register
    for name, fn in inits.items():
        setattr(nn.init, name, skip_meta(fn))
    try:
        yield
    finally:
        nn.Module.register_parameter = original
        for name, fn in inits.items():
            setattr(nn.init, name, fn)


# The input embedding matrices by their transformers names (BERT family, Llama family, GPT-2):
# ties to them follow config.tie_word_embeddings; other ties (an LM head's bias) always hold.
INPUT_EMBEDDINGS = ("word_embeddings.weight", "embed_tokens.weight", "wte.weight")


class LoadingInfo(dict):
    """missing_keys, unexpected_keys, mismatched_keys (name, checkpoint shape, model shape)."""


class PreTrainedModel(nn.Module):
    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    base_model_prefix: ClassVar[str] = ""
    # target parameter -> the parameter it shares storage with when word embeddings are tied
    tied_weights: ClassVar[dict[str, str]] = {}
    # checkpoint keys that are expected to be absent or surplus (e.g. position_ids buffers)
    ignore_missing: ClassVar[list[str]] = []
    ignore_unexpected: ClassVar[list[str]] = [r"position_ids$"]

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.config = config

    # -- initialisation and tying -----------------------------------------------------------
    def post_init(self) -> None:
        self.apply(self._init_weights)
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module, getattr(self.config, "initializer_range", 0.02))

    def active_ties(self) -> dict[str, str]:
        """The ties in force: those to the word embeddings only with tie_word_embeddings."""
        tie_embeddings = getattr(self.config, "tie_word_embeddings", True)
        return {t: s for t, s in self.tied_weights.items()
                if tie_embeddings or not s.endswith(INPUT_EMBEDDINGS)}

    def tie_weights(self) -> None:
        for target, source in self.active_ties().items():
            owner, _, name = target.rpartition(".")
            setattr(self.get_submodule(owner), name, self.get_parameter(source))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None
                                      ) -> None:
        """Trade compute for memory in training: each block of the model's layer loop keeps
        only its inputs and is recomputed in the backward pass (torch.utils.checkpoint,
        non-reentrant unless `gradient_checkpointing_kwargs` says `use_reentrant=True`).
        Inference and forwards without gradients are unaffected."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        for block in self._blocks():
            block.checkpoint_kwargs = kwargs  # read by layers.run_block

    def gradient_checkpointing_disable(self) -> None:
        for block in self._blocks():
            block.checkpoint_kwargs = None

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(b, "checkpoint_kwargs", None) is not None for b in self._blocks())

    def _blocks(self) -> list[nn.Module]:
        """The blocks of the layer loop: the items of the outermost nn.ModuleLists."""
        lists = {name: m for name, m in self.named_modules() if isinstance(m, nn.ModuleList)}
        return [block for name, m in lists.items()
                if not any(name.startswith(f"{other}.") for other in lists) for block in m]

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: PretrainedConfig | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        device_map: str | dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        output_loading_info: bool = False,
        ignore_mismatched_sizes: bool = False,
        use_safetensors: bool | None = None,
        gguf_file: str | None = None,
        quantization_config: Any = None,
        **kwargs: Any,
    ):
        """Load a model from a folder or a Hub repository (revision=, token=, cache_dir=, ...).

        `dtype`: "auto" (the default) is config.json's dtype. `gguf_file` names a llama.cpp GGUF
        file there: by default it is converted once to float32 into a cache folder (see
        cove.models.gguf) and loaded from it, as transformers does; with dtype="auto" its
        weights stay quantised (int4/int8 layers computing in bfloat16, at about the file's
        size: see cove.models.gguf.load_quantized). `device_map` ("auto", a device, or
        {"module.name": device}) spreads the model over devices (see cove.models.placement).
        `quantization_config` (a BitsAndBytesConfig or its dict form) quantises the linear
        layers to 4 or 8 bits as they load (see cove.models.quantization); `dtype` is then the
        dtype of the layers that stay in float."""
        if trust_remote_code:
            raise ValueError(
                "trust_remote_code=True is refused: Cove never runs code from a repository. "
                "Use a model family Cove implements."
            )
        if device is not None and device_map is not None:
            raise ValueError("Pass device= or device_map=, not both.")
        if "torch_dtype" in kwargs:
            dtype = kwargs.pop("torch_dtype")
        hub = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
        if gguf_file is not None and dtype == "auto":
            return cls._from_quantized_gguf(name_or_path, gguf_file, config, device, device_map,
                                            quantization_config, output_loading_info, hub)
        if dtype is None and gguf_file is None:
            dtype = "auto"
        if gguf_file is not None:
            from cove.models.gguf import load_gguf

            name_or_path, hub = load_gguf(name_or_path, gguf_file, dtype=dtype, **hub), {}
        if config is None:
            config = cls.config_class.from_pretrained(name_or_path, **hub, **kwargs)
        elif kwargs:
            for k, v in kwargs.items():
                setattr(config, k, v)
        inference_quant = None  # a TorchAoConfig: weight-only int8/int4 (cove.models.weight_only)
        if quantization_config is not None:
            from cove.models import quantization, weight_only

            if weight_only.is_torchao_config(quantization_config):
                inference_quant = weight_only.coerce(quantization_config)
                quantization_config = None
            else:
                quantization_config = quantization.BitsAndBytesConfig.coerce(
                    quantization_config)
        if getattr(config, "quantization_config", None):
            raise ckpt.CheckpointError(
                f"{name_or_path} holds weights already quantised ({config.quantization_config}"
                " in config.json); Cove loads float checkpoints only: load the original one, "
                "with quantization_config= to quantise it."
            )
        files = find_checkpoint(name_or_path, use_safetensors, **hub)
        state = ckpt.read_weights(files)
        target = as_dtype(dtype)
        if target == "auto":
            target = as_dtype(config.dtype) if config.dtype else _first_float_dtype(state)
        with parameters_on_meta():
            model = cls(config)
        quantized = ([] if quantization_config is None
                     else quantization.modules_to_quantize(model, quantization_config))
        keep_dtype = {f"{n}.weight" for n in quantized}
        if inference_quant is not None:
            keep_dtype = weight_only.replaced_weights(model, inference_quant)
        try:
            # Weights about to be quantised skip the cast to `target`: they stay views of the
            # memory-mapped checkpoint, each quantised and paged out in turn (no float copy).
            info = model._load_state(state, target, ignore_mismatched_sizes,
                                     keep_dtype=keep_dtype)
        except ckpt.CheckpointError as e:
            source = files[0] if len(files) == 1 else f"{len(files)} shards in {files[0].parent}"
            raise ckpt.CheckpointError(f"{source}: {e}") from None
        if quantization_config is not None:
            quantization.quantize_model(model, quantization_config, quantized,
                                        release_float=True)
        if inference_quant is not None:
            weight_only.quantize_model(model, inference_quant, release_float=True)
        del state  # the checkpoint's mapping goes once no float weight refers to it
        if target is not None:
            config.dtype = str(target).removeprefix("torch.")
        if device is not None:
            model.to(device)
        if device_map is not None:
            from cove.models.placement import dispatch

            dispatch(model, device_map)
        model.eval()
        model.name_or_path = str(name_or_path)  # as transformers: adapters record their base
        return (model, info) if output_loading_info else model

    @classmethod
    def _from_quantized_gguf(cls, name_or_path, gguf_file, config, device, device_map,
                             quantization_config, output_loading_info, hub):
        from cove.models.gguf import load_quantized

        if quantization_config is not None:
            raise ValueError("A GGUF file loaded with dtype='auto' keeps its own quantisation: "
                             "drop quantization_config=, or pass a float dtype to dequantise.")
        if device_map is not None or (device is not None and torch.device(device).type != "cpu"):
            raise ValueError("A GGUF file kept quantised (dtype='auto') runs on the CPU "
                             "(torch's int4/int8 CPU kernels): pass dtype='float32' (or "
                             "bfloat16) to dequantise it for another device.")
        model = load_quantized(cls, name_or_path, gguf_file, config=config, **hub)
        info = LoadingInfo(missing_keys=[], unexpected_keys=[], mismatched_keys=[],
                           error_msgs=[])
        return (model, info) if output_loading_info else model

    def _load_state(self, state: dict[str, torch.Tensor], dtype: torch.dtype | None,
                    ignore_mismatched_sizes: bool, keep_dtype: set[str] = frozenset()
                    ) -> LoadingInfo:
        """Assign the checkpoint's tensors, cast to `dtype` (except those in `keep_dtype`)."""
        state = self._adapt_keys(state)
        expected = dict(self.named_parameters(remove_duplicate=False))
        # Only persistent buffers are loaded (as transformers does): others are rebuilt.
        expected.update((n, b) for n, b in self.named_buffers(remove_duplicate=False)
                        if _is_persistent(self, n))
        tied = set(self.active_ties())
        params = {n for n, _ in self.named_parameters(remove_duplicate=False)}
        assign: dict[str, torch.Tensor] = {}
        unexpected, mismatched = [], []
        for name, tensor in state.items():
            current = expected.get(name)
            if current is None:
                if not any(re.search(p, name) for p in self.ignore_unexpected):
                    unexpected.append(name)
                continue
            if tuple(tensor.shape) != tuple(current.shape):
                mismatched.append((name, tuple(tensor.shape), tuple(current.shape)))
                continue
            if current.is_floating_point() and not tensor.is_floating_point():
                raise ckpt.CheckpointError(
                    f"tensor {name} has dtype {str(tensor.dtype).removeprefix('torch.')}, but "
                    "the model's weight is floating point"
                )
            if dtype is not None and tensor.is_floating_point() and name in params \
                    and name not in keep_dtype:
                tensor = tensor.to(dtype)
            assign[name] = tensor
        if mismatched and not ignore_mismatched_sizes:
            rows = "; ".join(f"{n}: checkpoint {a}, model {b}" for n, a, b in mismatched)
            raise ckpt.CheckpointError(
                f"Shapes in the checkpoint do not match the model ({rows}). Check the config, "
                "or pass ignore_mismatched_sizes=True to re-initialise those weights."
            )
        self.load_state_dict(assign, strict=False, assign=True)
        self.tie_weights()
        missing = []
        reinitialised = {n for n, _, _ in mismatched}
        for name, param in list(self.named_parameters()):
            if param.device.type == "meta":
                self._materialize(name, param, dtype)
                if name not in tied and name not in reinitialised and not any(
                        re.search(p, name) for p in self.ignore_missing):
                    missing.append(name)
        self.tie_weights()
        if mismatched:
            log.warning("Some weights of %s had another shape in the checkpoint and are newly "
                        "initialised: %s. Train the model before using it.", type(self).__name__,
                        ", ".join(f"{n} {a} -> {b}" for n, a, b in mismatched))
        if missing:
            log.warning("Some weights of %s were not in the checkpoint and are newly "
                        "initialised: %s. Train the model before using it.",
                        type(self).__name__, ", ".join(missing))
        if unexpected:
            log.info("Checkpoint weights not used by %s: %s", type(self).__name__,
                     ", ".join(unexpected))
        return LoadingInfo(missing_keys=missing, unexpected_keys=unexpected,
                           mismatched_keys=mismatched, error_msgs=[])

    def _materialize(self, name: str, param: nn.Parameter, dtype: torch.dtype | None) -> None:
        owner_name, _, attr = name.rpartition(".")
        owner = self.get_submodule(owner_name)
        real = torch.empty(param.shape, dtype=dtype or torch.float32)
        if attr == "bias":
            nn.init.zeros_(real)
        elif isinstance(owner, nn.LayerNorm) or "norm" in owner_name.lower():
            nn.init.ones_(real)
        else:
            nn.init.normal_(real, std=getattr(self.config, "initializer_range", 0.02))
        setattr(owner, attr, nn.Parameter(real, requires_grad=param.requires_grad))

    def _adapt_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept checkpoints of the base model for a head model and the reverse (prefix),
        and the old LayerNorm names gamma/beta."""
        def legacy(name: str) -> str:
            if name.endswith(".gamma"):
                return name[:-6] + ".weight"
            if name.endswith(".beta"):
                return name[:-5] + ".bias"
            return name

        state = {legacy(k): v for k, v in state.items()}
        prefix = self.base_model_prefix
        if not prefix:
            return state
        own = {n.split(".", 1)[0] for n, _ in self.named_parameters()}
        has_prefix = any(k.startswith(prefix + ".") for k in state)
        if prefix in own and not has_prefix:  # head model, base checkpoint
            return {f"{prefix}.{k}": v for k, v in state.items()}
        if prefix not in own and has_prefix:  # base model, head checkpoint
            # Head weights stay under their own names, so they are reported as unexpected.
            return {k.removeprefix(prefix + "."): v for k, v in state.items()}
        return state

    # -- saving -----------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *,
                        max_shard_size: int | str = ckpt.DEFAULT_SHARD_SIZE,
                        push_to_hub: bool = False, **push_kwargs: Any) -> None:
        """config.json + safetensors (sharded above max_shard_size), loadable by transformers."""
        folder = Path(save_directory)
        self.config.architectures = [type(self).__name__]
        self.config.dtype = str(self.dtype).removeprefix("torch.")
        self.config.save_pretrained(folder)
        ckpt.save_weights(self._state_for_saving(), folder, max_shard_size)
        if push_to_hub:
            self.push_to_hub(push_kwargs.pop("repo_id", folder.name), **push_kwargs)

    def _state_for_saving(self) -> dict[str, torch.Tensor]:
        state = self.state_dict()
        persistent = {n for n, _ in self.named_parameters()} | {
            n for n, b in self.named_buffers() if _is_persistent(self, n)}
        tied = set(self.active_ties())
        state = {k: v.detach() for k, v in state.items() if k in persistent and k not in tied}
        if getattr(self, "is_quantized", False):
            from cove.models.quantization import dequantized_state

            state = dequantized_state(self, state)
            # A head quantised with its tied embedding shares its int8 rows (weight_only):
            # written once, under the embedding's name, as the float checkpoint had it.
            for target, source in type(self).tied_weights.items():
                head = self.get_submodule(target.rpartition(".")[0])
                embed = self.get_submodule(source.rpartition(".")[0])
                if getattr(head, "qweight", None) is not None \
                        and head.qweight is getattr(embed, "qweight", None):
                    state.pop(target, None)
        return state

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None,
                    private: bool | None = None, token: str | None = None,
                    revision: str | None = None, endpoint: str | None = None,
                    max_shard_size: int | str = ckpt.DEFAULT_SHARD_SIZE) -> str:
        """Save to a temp folder and upload it as one commit; returns the commit URL.

        The default message is transformers': "Upload model" for a class named ...Model...,
        else "Upload <class name>"."""
        from cove.hub import HubApi

        if commit_message is None:
            name = type(self).__name__
            commit_message = "Upload model" if "Model" in name else f"Upload {name}"

        api = HubApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, private=bool(private), exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size)
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                     commit_message=commit_message)


def _is_persistent(model: nn.Module, name: str) -> bool:
    owner, _, attr = name.rpartition(".")
    return attr not in model.get_submodule(owner)._non_persistent_buffers_set


def _first_float_dtype(state: dict[str, torch.Tensor]) -> torch.dtype | None:
    return next((t.dtype for t in state.values() if t.is_floating_point()), None)


def find_checkpoint(name_or_path: str | os.PathLike, use_safetensors: bool | None = None,
                    **hub: Any) -> list[Path]:
    """The weight files of a model: safetensors first (single, then sharded), then .bin."""
    kinds = [(ckpt.SAFE_WEIGHTS, ckpt.SAFE_INDEX)]
    if use_safetensors is not True:
        kinds.append((ckpt.PT_WEIGHTS, ckpt.PT_INDEX))
    if use_safetensors is False:
        kinds = kinds[1:]
    for single, index in kinds:
        path = resolve_file(name_or_path, single, **hub)
        if path is not None:
            return [path]
        path = resolve_file(name_or_path, index, **hub)
        if path is not None:
            shards = sorted(set(ckpt.read_index(path).values()))
            found = []
            for shard in shards:
                try:
                    found.append(resolve_file(name_or_path, shard, required=True, **hub))
                except OSError as e:  # FileNotFoundError, or the Hub's EntryNotFoundError
                    raise ckpt.MissingShardError(
                        f"{path} names the shard {shard!r}, which is missing from "
                        f"{name_or_path}: {e}"
                    ) from e
            return found
    raise FileNotFoundError(
        f"No weights found for {name_or_path}: expected {ckpt.SAFE_WEIGHTS}, {ckpt.SAFE_INDEX}"
        f"{'' if use_safetensors else f', {ckpt.PT_WEIGHTS} or {ckpt.PT_INDEX}'}."
    )
