"""PeftModel and its task variants: an adapted model that trains, saves and loads only its
adapters, in PEFT's file format (adapter_config.json + adapter_model.safetensors).

    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8))
    model.save_pretrained("out")                       # only the adapter
    model = PeftModel.from_pretrained(base, "out")     # a folder or a Hub repository

LoRA and IA3 replace the targeted layers in place (`base_model` is then a LoraModel/IA3Model
around the model); prompt learning (prompt tuning, p-tuning, prefix tuning) leaves the model
untouched as `base_model` and feeds virtual tokens through `prompt_encoder`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from cove.generation import GenerationMixin
from cove.models.configuration import HUB_KWARGS
from cove.peft.config import (
    PeftConfig,
    PeftType,
    PrefixTuningConfig,
    PromptEncoderConfig,
    TaskType,
    _enum,
    atomic_write_text,
)
from cove.peft.ia3 import IA3Model
from cove.peft.lora import LoraModel
from cove.peft.prompt import build_encoder
from cove.peft.save_and_load import (
    get_peft_model_state_dict,
    input_output_embeddings,
    load_peft_weights,
    save_adapter_weights,
    set_peft_model_state_dict,
)
from cove.peft.tuners import ModulesToSaveWrapper, wrap_modules_to_save

TUNERS: dict[PeftType, type] = {PeftType.LORA: LoraModel, PeftType.IA3: IA3Model}


class PeftModel(nn.Module):
    """A model with one or more adapters of one kind; attributes it lacks come from the
    model (`peft_model.config`, `peft_model.generation_config`)."""

    # Heads a task trains whole besides the adapter (added to modules_to_save).
    head_modules: ClassVar[tuple[str, ...]] = ()
    # Task types whose prompt learning (virtual tokens) this class knows how to run.
    prompt_learning_ok: ClassVar[bool] = False

    def __init__(self, model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default",
                 autocast_adapter_dtype: bool = True) -> None:
        super().__init__()
        if not isinstance(peft_config, PeftConfig):
            raise TypeError(f"peft_config must be a PeftConfig (LoraConfig, ...), got "
                            f"{type(peft_config).__name__}.")
        if isinstance(model, PeftModel):
            raise ValueError("The model is a PeftModel already: add another adapter with "
                             "add_adapter(), or pass its get_base_model().")
        self._adapters_disabled = False
        self._autocast = autocast_adapter_dtype
        self._generating = False
        self.peft_type = peft_config.peft_type
        peft_config = self._with_heads(peft_config)
        if peft_config.is_prompt_learning:
            self._check_prompt_learning(peft_config)
            self._peft_config: dict[str, PeftConfig] | None = {}
            self._active_adapter = adapter_name
            self.base_model = model
            self.prompt_encoder = nn.ModuleDict()
            self.add_adapter(adapter_name, peft_config)
        else:
            self._peft_config = None
            tuner = TUNERS.get(peft_config.peft_type)
            if tuner is None:
                raise ValueError(f"Adapter type {peft_config.peft_type} is not supported.")
            self.base_model = tuner(model, {adapter_name: peft_config}, adapter_name,
                                    autocast_adapter_dtype)

    def _check_prompt_learning(self, config: PeftConfig) -> None:
        if not self.prompt_learning_ok:
            raise ValueError(f"{config.peft_type.value} needs task_type CAUSAL_LM or SEQ_CLS in "
                             f"Cove (got {getattr(config.task_type, 'value', None)}): pass it "
                             "to the config.")

    def _with_heads(self, config: PeftConfig) -> PeftConfig:
        if self.head_modules:
            keep = list(config.modules_to_save or [])
            config.modules_to_save = keep + [h for h in self.head_modules if h not in keep]
        return config

    # -- attributes -------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":  # not set yet (during __init__): do not recurse
                raise
            return getattr(self.base_model, name)

    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        if self._peft_config is not None:
            return self._peft_config
        return self.base_model.peft_config

    @property
    def active_adapter(self) -> str:
        if self._peft_config is not None:
            return self._active_adapter
        active = self.base_model.active_adapter
        return active if isinstance(active, str) else active[0]

    @property
    def active_adapters(self) -> list[str]:
        if self._peft_config is not None:
            return [self._active_adapter]
        return self.base_model.active_adapters

    @property
    def active_peft_config(self) -> PeftConfig:
        return self.peft_config[self.active_adapter]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def generation_config(self) -> Any:
        return self.get_base_model().generation_config

    @generation_config.setter
    def generation_config(self, value: Any) -> None:
        self.get_base_model().generation_config = value

    def get_base_model(self) -> nn.Module:
        """The model the adapters wrap (with LoRA/IA3 layers in it, unless unloaded)."""
        if self._peft_config is not None:
            return self.base_model
        return self.base_model.model

    # -- counting ---------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters), adapters included."""
        trainable = total = 0
        for _, param in self.named_parameters():
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
        for module in self.modules():
            # A quantised linear keeps its weight in buffers (codes and scales): counted as
            # the in x out weights it stands for, as PEFT counts bitsandbytes' 4-bit weights.
            if callable(getattr(module, "dequantize", None)) and not isinstance(
                    getattr(module, "weight", None), nn.Parameter):
                total += module.in_features * module.out_features
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # -- running ----------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.get_base_model()(*args, **kwargs)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model alone inside this block: `with model.disable_adapter(): ...`."""
        was_disabled = self._adapters_disabled
        if self._peft_config is not None:
            wrappers = list(self._wrappers())
            for w in wrappers:
                w.enable_adapters(False)
            self._adapters_disabled = True
            try:
                yield
            finally:
                self._adapters_disabled = was_disabled
                for w in wrappers:
                    w.enable_adapters(True)
            return
        with self.base_model.disabled():
            self._adapters_disabled = True
            try:
                yield
            finally:
                self._adapters_disabled = was_disabled

    def _wrappers(self) -> Iterator[ModulesToSaveWrapper]:
        for module in self.modules():
            if isinstance(module, ModulesToSaveWrapper):
                yield module

    # -- several adapters -------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, peft_config: PeftConfig) -> None:
        """Add another adapter of the same kind (not made active: see set_adapter)."""
        if peft_config.peft_type != self.peft_type:
            raise ValueError(f"Cannot add a {peft_config.peft_type.value} adapter to a model "
                             f"with {self.peft_type.value} adapters: use one kind per model.")
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = _name_or_path(self.get_base_model())
        peft_config = self._with_heads(peft_config)
        if self._peft_config is None:
            if adapter_name in self.peft_config:
                raise ValueError(f"An adapter named {adapter_name!r} exists already.")
            self.base_model.peft_config[adapter_name] = peft_config
            try:
                self.base_model.inject_adapter(self.base_model.model, adapter_name)
            except Exception:
                del self.base_model.peft_config[adapter_name]
                raise
            return
        if adapter_name in self._peft_config:
            raise ValueError(f"An adapter named {adapter_name!r} exists already.")
        self._check_prompt_learning(peft_config)
        self._peft_config[adapter_name] = peft_config
        try:
            self._setup_prompt_encoder(adapter_name)
        except Exception:
            del self._peft_config[adapter_name]
            raise
        wrap_modules_to_save(self.base_model, peft_config.modules_to_save, adapter_name,
                             peft_config.inference_mode)
        self.set_adapter(self._active_adapter)

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Make `adapter_name` the active adapter (the only one that trains)."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"No adapter named {adapter_name!r}: this model has "
                             f"{', '.join(sorted(self.peft_config))}.")
        if self._peft_config is None:
            self.base_model.set_adapter(adapter_name, inference_mode=inference_mode)
            return
        self._active_adapter = adapter_name
        frozen = inference_mode or self._peft_config[adapter_name].inference_mode
        for name, encoder in self.prompt_encoder.items():
            encoder.requires_grad_(name == adapter_name and not frozen)
        for wrapper in self._wrappers():
            wrapper.set_adapter(adapter_name)
            if frozen:
                wrapper.modules_to_save.requires_grad_(False)

    def delete_adapter(self, adapter_name: str) -> None:
        if self._peft_config is None:
            self.base_model.delete_adapter(adapter_name)
            return
        if adapter_name not in self._peft_config:
            raise ValueError(f"No adapter named {adapter_name!r}: this model has "
                             f"{', '.join(sorted(self._peft_config))}.")
        if len(self._peft_config) == 1:
            raise ValueError("Cannot delete the only adapter of a prompt-learning model: use "
                             "get_base_model() for the model without it.")
        del self._peft_config[adapter_name]
        del self.prompt_encoder[adapter_name]
        for wrapper in self._wrappers():
            if adapter_name in wrapper.modules_to_save:
                del wrapper.modules_to_save[adapter_name]
        if self._active_adapter == adapter_name:
            self.set_adapter(next(iter(self._peft_config)))

    # -- prompt learning --------------------------------------------------------------------
    def _setup_prompt_encoder(self, adapter_name: str) -> None:
        config = self._peft_config[adapter_name]
        model = self.base_model
        _fill_prompt_config(config, model)
        if isinstance(config, PrefixTuningConfig) and not callable(
                getattr(model, "new_cache", None)):
            raise ValueError(f"Prefix tuning needs a model that takes past_key_values (a Cove "
                             f"decoder: Llama, Mistral, Qwen, GPT-2); {type(model).__name__} "
                             "does not. Use prompt tuning or LoRA instead.")
        model.requires_grad_(False)
        embeddings = input_output_embeddings(model)
        if not embeddings:
            raise ValueError(f"{type(model).__name__} exposes no input embeddings "
                             "(get_input_embeddings): prompt learning needs them.")
        # Kept out of the module tree (no second copy in state_dict), but reachable as PEFT's.
        self.__dict__["word_embeddings"] = embeddings[0]
        encoder = build_encoder(config, embeddings[0])
        weight = embeddings[0].weight
        dtype = torch.float32 if self._autocast else weight.dtype
        self.prompt_encoder[adapter_name] = encoder.to(weight.device, dtype)
        if config.inference_mode:
            encoder.requires_grad_(False)

    def _prompt_tokens(self, adapter_name: str) -> torch.Tensor:
        config = self.peft_config[adapter_name]
        total = config.num_virtual_tokens * config.num_transformer_submodules
        device = self.prompt_encoder[adapter_name].embedding.weight.device
        return torch.arange(total, device=device).unsqueeze(0)

    def get_prompt(self, batch_size: int) -> Any:
        """The active adapter's virtual tokens for `batch_size` rows: embeddings
        [batch, tokens, dim], or for prefix tuning each layer's (keys, values)."""
        name = self.active_adapter
        config = self.peft_config[name]
        encoder = self.prompt_encoder[name]
        if config.inference_mode:
            out = encoder.embedding.weight.unsqueeze(0)
        else:
            out = encoder(self._prompt_tokens(name)[:, :config.num_virtual_tokens]
                          if isinstance(config, PrefixTuningConfig)
                          else self._prompt_tokens(name))
        out = out.expand(batch_size, -1, -1)
        if not isinstance(config, PrefixTuningConfig):
            return out
        base_dtype = self.base_model.dtype
        heads = config.num_attention_heads
        kv = out.to(base_dtype).reshape(batch_size, config.num_virtual_tokens,
                                        config.num_layers * 2, heads, config.token_dim // heads)
        kv = kv.permute(2, 0, 3, 1, 4)  # [layers * 2, batch, heads, tokens, head_dim]
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(config.num_layers)]

    def get_prompt_embedding_to_save(self, adapter_name: str) -> torch.Tensor:
        """What adapter_model.safetensors stores: the encoder's output for each virtual token."""
        config = self.peft_config[adapter_name]
        encoder = self.prompt_encoder[adapter_name]
        if config.inference_mode:
            return encoder.embedding.weight.detach().cpu()
        tokens = self._prompt_tokens(adapter_name)
        if isinstance(config, PrefixTuningConfig):
            tokens = tokens[:, :config.num_virtual_tokens]
        with torch.no_grad():
            return encoder(tokens)[0].detach().cpu()

    def _prefix_cache(self, batch_size: int, length: int, cache: Any = None,
                      dtype: torch.dtype | None = None, device: Any = None) -> Any:
        """A KV cache with room for `length` positions after the virtual tokens, holding the
        prefix; or `cache` (empty) filled with it."""
        config = self.active_peft_config
        if cache is None:
            cache = self.base_model.new_cache(batch_size, config.num_virtual_tokens + length,
                                              dtype=dtype, device=device)
        for layer, (k, v) in enumerate(self.get_prompt(batch_size)):
            cache.update(layer, k, v)
        return cache

    def _prompt_inputs(self, input_ids: Any, inputs_embeds: Any, attention_mask: Any,
                       kwargs: dict[str, Any]) -> tuple[int, Any]:
        """Batch size and the attention mask widened by the virtual tokens; position ids of a
        prefix-tuned model shifted past them (other methods drop them, as PEFT)."""
        config = self.active_peft_config
        n = config.num_virtual_tokens
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if attention_mask is not None:
            ones = torch.ones(batch, n, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        positions = kwargs.pop("position_ids", None)
        if positions is not None:
            if isinstance(config, PrefixTuningConfig):
                kwargs["position_ids"] = positions + n
            elif not self._generating:
                warnings.warn("Position ids are not supported for parameter efficient tuning. "
                              "Ignoring position ids.", stacklevel=3)
        return batch, attention_mask

    def _prompt_embeds(self, batch: int, input_ids: Any, inputs_embeds: Any) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        prompts = self.get_prompt(batch).to(inputs_embeds.dtype)
        return torch.cat([prompts, inputs_embeds], dim=1)

    # -- saving and loading -----------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        selected_adapters: list[str] | None = None,
                        save_embedding_layers: bool | str = "auto",
                        is_main_process: bool = True,
                        state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write each adapter's adapter_config.json and weights: "default" in the folder,
        others in a subfolder of their name; plus a README.md model card if none exists."""
        root = Path(save_directory)
        if root.is_file():
            raise ValueError(f"save_directory {root} is a file: give a folder.")
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"No adapters named {unknown}: this model has "
                             f"{', '.join(sorted(self.peft_config))}.")
        if not is_main_process:
            return
        for name in names:
            folder = root if name == "default" else root / name
            folder.mkdir(parents=True, exist_ok=True)
            weights = get_peft_model_state_dict(self, state_dict, name, save_embedding_layers)
            save_adapter_weights(weights, folder, safe_serialization)
            self._config_to_save(name).save_pretrained(folder)
        self._write_model_card(root)

    def _config_to_save(self, adapter_name: str) -> PeftConfig:
        config = self.peft_config[adapter_name]
        config = type(config).from_dict(config.to_dict())
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = _name_or_path(self.get_base_model())
        if config.task_type is None:  # how PEFT's AutoPeftModel finds the model class
            base = self.get_base_model()
            model_type = str(getattr(getattr(base, "config", None), "model_type", ""))
            family = model_type.replace("-", "_")
            config.auto_mapping = {"base_model_class": type(base).__name__,
                                   "parent_library": f"transformers.models.{family}."
                                                     f"modeling_{family}"}
        return config

    def _write_model_card(self, root: Path) -> None:
        card = root / "README.md"
        if card.exists():
            return
        config = self.active_peft_config
        base = config.base_model_name_or_path
        head = ["---"]
        if base:
            head.append(f"base_model: {base}")
        head += ["library_name: peft", "tags:"]
        if base:
            head.append(f"- base_model:adapter:{base}")
        head += [f"- {config.peft_type.value.lower()}", "---", ""]
        body = (f"# {root.resolve().name}\n\nA {config.peft_type.value} adapter"
                f"{f' for `{base}`' if base else ''}, in PEFT's format: load it with "
                "`PeftModel.from_pretrained(base_model, <this repository>)` (cove.peft or "
                "peft).\n")
        atomic_write_text(card, "\n".join(head) + "\n" + body)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = "Upload model",
                    private: bool | None = None, token: str | None = None,
                    revision: str | None = None, endpoint: str | None = None,
                    **save_kwargs: Any) -> Any:
        """Save the adapters to a temp folder and upload it as one commit (any Hub: Cove's
        server or another, by endpoint= or COVE_ENDPOINT/HF_ENDPOINT)."""
        from cove.hub import HubApi

        api = HubApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, private=bool(private), exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, **save_kwargs)
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                     commit_message=commit_message or "Upload model")

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str | os.PathLike,
                        adapter_name: str = "default", is_trainable: bool = False,
                        config: PeftConfig | None = None, autocast_adapter_dtype: bool = True,
                        **kwargs: Any) -> PeftModel:
        """`model` adapted by the adapter in `model_id` (a folder or a Hub repository id;
        revision=, token=, subfolder=, ...). In eval mode with frozen adapters unless
        is_trainable=True. The task variant comes from the adapter's task_type."""
        hub = _hub_kwargs(kwargs)
        if config is None:
            config = PeftConfig.from_pretrained(model_id, **hub)
        elif not isinstance(config, PeftConfig):
            raise TypeError(f"config must be a PeftConfig, got {type(config).__name__}.")
        config.inference_mode = not is_trainable
        target = cls
        if cls is PeftModel and config.task_type is not None:
            target = task_model_class(config.task_type)
        peft_model = target(model, config, adapter_name, autocast_adapter_dtype)
        peft_model._load_weights(model_id, adapter_name, is_trainable, hub)
        return peft_model

    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str,
                     is_trainable: bool = False, **kwargs: Any) -> dict[str, list]:
        """Add the adapter in `model_id` under `adapter_name` (not made active)."""
        hub = _hub_kwargs(kwargs)
        if adapter_name not in self.peft_config:
            config = PeftConfig.from_pretrained(model_id, **hub)
            config.inference_mode = not is_trainable
            self.add_adapter(adapter_name, config)
        return self._load_weights(model_id, adapter_name, is_trainable, hub)

    def _load_weights(self, model_id: str | os.PathLike, adapter_name: str,
                      is_trainable: bool, hub: dict[str, Any]) -> dict[str, list]:
        state = load_peft_weights(model_id, device=self.device, **hub)
        result = set_peft_model_state_dict(self, state, adapter_name)
        if not is_trainable:
            self.eval()
        return result


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = [k for k in kwargs if k not in HUB_KWARGS]
    if unknown:
        raise TypeError(f"Unexpected arguments {unknown}: from_pretrained takes the adapter's "
                        f"Hub options ({', '.join(sorted(HUB_KWARGS))}).")
    return dict(kwargs)


def _name_or_path(model: nn.Module) -> str | None:
    return getattr(model, "name_or_path", None) or None


def _fill_prompt_config(config: Any, model: nn.Module) -> None:
    """The base's sizes into a prompt-learning config (those left unset): layers, width,
    heads; prefix tuning on a grouped-query model uses the key/value heads' width."""
    model_config = getattr(model, "config", None)
    if config.num_layers is None:
        config.num_layers = model_config.num_hidden_layers
    if config.num_transformer_submodules is None:
        config.num_transformer_submodules = 1
    if config.token_dim is None:
        config.token_dim = model_config.hidden_size
        heads = model_config.num_attention_heads
        kv_heads = getattr(model_config, "num_key_value_heads", None)
        if isinstance(config, PrefixTuningConfig) and kv_heads:
            config.token_dim = config.token_dim // heads * kv_heads
            config.num_attention_heads = kv_heads
    if config.num_attention_heads is None:
        config.num_attention_heads = model_config.num_attention_heads
    if isinstance(config, (PrefixTuningConfig, PromptEncoderConfig)) and \
            config.encoder_hidden_size is None:
        config.encoder_hidden_size = config.token_dim


class PeftModelForCausalLM(PeftModel, GenerationMixin):
    """A causal LM with adapters: forward, and generate (virtual tokens included)."""

    prompt_learning_ok = True
    # generate reaches this model only with virtual tokens in force (else the base model's
    # generate runs): they take cache positions the base model's kernel steps don't know of,
    # so its steps run through this forward.
    fast_decoder = None

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, position_ids: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        config = self.active_peft_config
        if position_ids is not None:  # named, so generate passes its (padding-aware) positions
            kwargs["position_ids"] = position_ids
        common = dict(output_attentions=output_attentions,
                      output_hidden_states=output_hidden_states, return_dict=return_dict)
        if not config.is_prompt_learning or self._adapters_disabled:
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                   inputs_embeds=inputs_embeds, labels=labels, **common,
                                   **kwargs)
        if kwargs.pop("token_type_ids", None) is not None:
            warnings.warn("Token type ids are not supported for parameter efficient tuning. "
                          "Ignoring token type ids", stacklevel=2)
        batch, attention_mask = self._prompt_inputs(input_ids, inputs_embeds, attention_mask,
                                                    kwargs)
        cache = kwargs.pop("past_key_values", None)
        if isinstance(config, PrefixTuningConfig):
            if cache is None:
                length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
                cache = self._prefix_cache(batch, length)
            elif cache.get_seq_length() == 0:
                cache = self._prefix_cache(batch, 0, cache)
            return self.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                   attention_mask=attention_mask, past_key_values=cache,
                                   labels=labels, **common, **kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            # a generation step: the virtual tokens are in the cache already
            return self.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                   attention_mask=attention_mask, past_key_values=cache,
                                   **common, **kwargs)
        if labels is not None:
            ignore = torch.full((batch, config.num_virtual_tokens), -100, dtype=labels.dtype,
                                device=labels.device)
            labels = torch.cat([ignore, labels], dim=1)
        embeds = self._prompt_embeds(batch, input_ids, inputs_embeds)
        return self.base_model(inputs_embeds=embeds, attention_mask=attention_mask,
                               past_key_values=cache, labels=labels, **common, **kwargs)

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> Any:
        """The base model's KV cache with room for the virtual tokens too (for prefix tuning,
        holding them)."""
        config = self.active_peft_config
        if isinstance(config, PrefixTuningConfig) and not self._adapters_disabled:
            return self._prefix_cache(batch_size, max_length, dtype=dtype, device=device)
        extra = config.num_virtual_tokens if config.is_prompt_learning else 0
        return self.get_base_model().new_cache(batch_size, max_length + extra, dtype=dtype,
                                               device=device)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's generate, with the adapters (and virtual tokens) in force."""
        if not self.active_peft_config.is_prompt_learning or self._adapters_disabled:
            return self.get_base_model().generate(*args, **kwargs)
        self._generating = True
        try:
            return GenerationMixin.generate(self, *args, **kwargs)
        finally:
            self._generating = False


class PeftModelForSequenceClassification(PeftModel):
    """A classifier with adapters; its head (classifier/score) trains whole."""

    head_modules = ("classifier", "score")
    prompt_learning_ok = True

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> Any:
        config = self.active_peft_config
        common = dict(labels=labels, output_attentions=output_attentions,
                      output_hidden_states=output_hidden_states, return_dict=return_dict)
        if not config.is_prompt_learning or self._adapters_disabled:
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                   inputs_embeds=inputs_embeds, **common, **kwargs)
        batch, attention_mask = self._prompt_inputs(input_ids, inputs_embeds, attention_mask,
                                                    kwargs)
        if isinstance(config, PrefixTuningConfig):
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            return self.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                   attention_mask=attention_mask,
                                   past_key_values=self._prefix_cache(batch, length),
                                   **common, **kwargs)
        token_types = kwargs.get("token_type_ids")
        if token_types is not None:  # the virtual tokens are of type 0
            zeros = torch.zeros(batch, config.num_virtual_tokens, dtype=token_types.dtype,
                                device=token_types.device)
            kwargs["token_type_ids"] = torch.cat([zeros, token_types], dim=1)
        embeds = self._prompt_embeds(batch, input_ids, inputs_embeds)
        return self.base_model(inputs_embeds=embeds, attention_mask=attention_mask, **common,
                               **kwargs)


class PeftModelForSeq2SeqLM(PeftModel):
    """An encoder-decoder LM (T5, BART, Marian) with LoRA or IA3 adapters: forward (with
    labels, or decoder_input_ids) and generate run the adapted model."""

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None,
                decoder_inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs: Any) -> Any:
        # Named, not only **kwargs: the Trainer keeps the dataset columns forward names.
        return self.get_base_model()(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
            decoder_inputs_embeds=decoder_inputs_embeds, labels=labels,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=return_dict, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The adapted model's generate (the encoder runs once, with its adapters too)."""
        return self.get_base_model().generate(*args, **kwargs)


class PeftModelForTokenClassification(PeftModel):
    """A token classifier with LoRA or IA3 adapters; its head trains whole."""

    head_modules = ("classifier", "score")


class PeftModelForQuestionAnswering(PeftModel):
    """An extractive QA model with LoRA or IA3 adapters; its qa_outputs head trains whole."""

    head_modules = ("qa_outputs",)


class PeftModelForFeatureExtraction(PeftModel):
    """An encoder (hidden states out) with LoRA or IA3 adapters."""


MODEL_TYPE_TO_PEFT_MODEL_MAPPING: dict[TaskType, type[PeftModel]] = {
    TaskType.SEQ_CLS: PeftModelForSequenceClassification,
    TaskType.CAUSAL_LM: PeftModelForCausalLM,
    TaskType.SEQ_2_SEQ_LM: PeftModelForSeq2SeqLM,
    TaskType.TOKEN_CLS: PeftModelForTokenClassification,
    TaskType.QUESTION_ANS: PeftModelForQuestionAnswering,
    TaskType.FEATURE_EXTRACTION: PeftModelForFeatureExtraction,
}


def task_model_class(task_type: TaskType | str | None) -> type[PeftModel]:
    if task_type is None:
        return PeftModel
    return MODEL_TYPE_TO_PEFT_MODEL_MAPPING[_enum(TaskType, task_type, "task_type")]


def get_peft_model(model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default",
                   autocast_adapter_dtype: bool = True, revision: str | None = None
                   ) -> PeftModel:
    """`model` with a new adapter (the PeftModel variant of peft_config.task_type). Only the
    adapter (and modules_to_save) trains; the new adapter layers start in training mode."""
    peft_config.base_model_name_or_path = _name_or_path(model)
    if revision is not None:
        peft_config.revision = revision
    cls = task_model_class(peft_config.task_type)
    return cls(model, peft_config, adapter_name, autocast_adapter_dtype)
