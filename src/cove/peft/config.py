"""Adapter configurations: adapter_config.json in and out, with PEFT 0.21's keys and defaults.

Every key PEFT writes is a field here, so a saved file has exactly PEFT's keys. Fields of
PEFT features Cove does not implement are kept at their neutral values (a config that sets one
is refused by name). Keys a newer PEFT added are dropped with a warning when a file is read.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

CONFIG_NAME = "adapter_config.json"
# The PEFT release whose file format Cove writes; "+cove" says which library wrote it.
PEFT_FORMAT_VERSION = "0.21.2+cove"


class PeftType(str, enum.Enum):
    """The adapter methods (PEFT's names; Cove implements these)."""

    PROMPT_TUNING = "PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    LORA = "LORA"
    IA3 = "IA3"


class TaskType(str, enum.Enum):
    """What the adapted model does: picks the PeftModel variant (PeftModelForCausalLM, ...)."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


class PromptTuningInit(str, enum.Enum):
    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


class PromptEncoderReparameterizationType(str, enum.Enum):
    MLP = "MLP"
    LSTM = "LSTM"


def _enum(kind: type[enum.Enum], value: Any, name: str) -> Any:
    if value is None or isinstance(value, kind):
        return value
    try:
        return kind(str(value).upper() if kind is not PeftType else str(value))
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{name}={value!r} is not one of {choices}.") from None


@dataclass
class PeftConfig:
    """What every adapter config has."""

    # Fields PEFT writes for features Cove lacks -> their neutral values.
    unsupported: ClassVar[dict[str, tuple]] = {}

    auto_mapping: dict | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    peft_type: PeftType | str | None = None
    task_type: TaskType | str | None = None
    inference_mode: bool = False
    peft_version: str | None = None

    def __post_init__(self) -> None:
        self.task_type = _enum(TaskType, self.task_type, "task_type")
        if self.peft_version is None:
            self.peft_version = PEFT_FORMAT_VERSION
        for name, neutral in self.unsupported.items():
            value = getattr(self, name)
            if value not in neutral:
                raise ValueError(f"{type(self).__name__}({name}={value!r}) is not supported by "
                                 "Cove yet: leave it unset.")

    @property
    def is_prompt_learning(self) -> bool:
        return False

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready fields, sorted (sets become sorted lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, (set, frozenset)):
                value = sorted(value)
            out[f.name] = value
        return dict(sorted(out.items()))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write adapter_config.json (inference_mode true, as PEFT saves it), atomically."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        data["inference_mode"] = True
        atomic_write_text(folder / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeftConfig:
        """The config class named by data["peft_type"] (or `cls`), unknown keys dropped."""
        if cls is PeftConfig:
            kind = data.get("peft_type")
            if kind is None:
                raise ValueError("The adapter config has no peft_type: it is not a PEFT config.")
            config_cls = config_class(kind)
        else:
            config_cls = cls
        known = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{config_cls.__name__}: ignoring keys Cove does not know {unknown} "
                          "(probably written by a newer PEFT).", stacklevel=3)
        return config_cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PeftConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object.")
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, subfolder: str | None = None,
                        **hub: Any) -> PeftConfig:
        """From a folder or a Hub repository (revision=, token=, cache_dir=, ...)."""
        from cove.models.files import resolve_file

        path = resolve_file(name_or_path, CONFIG_NAME, subfolder=subfolder, **hub)
        if path is None:
            raise FileNotFoundError(f"No {CONFIG_NAME} in {name_or_path}"
                                    f"{f' (subfolder {subfolder})' if subfolder else ''}: it "
                                    "is not a PEFT adapter.")
        return cls.from_json_file(path)


@dataclass
class LoraConfig(PeftConfig):
    """LoRA: low-rank updates B @ A added to the targeted layers, scaled by lora_alpha / r.

    target_modules: a list of names matched as suffixes of module paths ("q_proj",
    "self_attn.v_proj"), a regex matched against the full path, or "all-linear" (every linear
    layer but the output head). init_lora_weights: True (A Kaiming-uniform, B zero: the
    adapter starts as a no-op), False (random A and B), "gaussian" or "pissa".
    """

    unsupported: ClassVar[dict[str, tuple]] = {
        "alora_invocation_tokens": (None,), "arrow_config": (None,), "corda_config": (None,),
        "ensure_weight_tying": (False,), "eva_config": (None,), "kasa_config": (None,),
        "layer_replication": (None,), "loftq_config": ({}, None), "lora_bias": (False,),
        "lora_ga_config": (None,), "megatron_config": (None,), "monteclora_config": (None,),
        "target_parameters": (None,), "trainable_token_indices": (None,),
        "use_bdlora": (None, False), "use_qalora": (False,), "velora_config": (None,),
    }

    r: int = 8
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    lora_alpha: int | float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_dora: bool = False
    # PEFT's other keys, written with their neutral values.
    alora_invocation_tokens: list[int] | None = None
    arrow_config: dict | None = None
    corda_config: dict | None = None
    ensure_weight_tying: bool = False
    eva_config: dict | None = None
    kasa_config: dict | None = None
    layer_replication: list | None = None
    loftq_config: dict = field(default_factory=dict)
    lora_bias: bool = False
    lora_ga_config: dict | None = None
    megatron_config: dict | None = None
    megatron_core: str | None = "megatron.core"
    monteclora_config: dict | None = None
    qalora_group_size: int = 16
    target_parameters: list[str] | None = None
    trainable_token_indices: Any = None
    use_bdlora: Any = None
    use_qalora: bool = False
    velora_config: dict | None = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType.LORA
        super().__post_init__()
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.exclude_modules, (set, tuple)):
            self.exclude_modules = sorted(self.exclude_modules)
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r must be a positive int (the adapter's rank), got {self.r!r}.")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"bias={self.bias!r}: use 'none', 'all' or 'lora_only'.")
        init = self.init_lora_weights
        if not (isinstance(init, bool) or (isinstance(init, str)
                                           and init.lower() in ("gaussian", "pissa"))):
            raise ValueError(f"init_lora_weights={init!r}: Cove supports True, False, "
                             "'gaussian' and 'pissa'.")
        if isinstance(self.target_modules, str):
            if self.layers_to_transform is not None:
                raise ValueError("layers_to_transform cannot be used when target_modules is a "
                                 "str (a regex): list the module names instead.")
            if self.layers_pattern is not None:
                raise ValueError("layers_pattern cannot be used when target_modules is a str.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern needs layers_to_transform.")


@dataclass
class IA3Config(PeftConfig):
    """(IA)^3: learned vectors that scale the targeted layers' outputs, or their inputs for
    the feed-forward ones (feedforward_modules, a subset of target_modules)."""

    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: bool = False
    modules_to_save: list[str] | None = None
    init_ia3_weights: bool = True

    def __post_init__(self) -> None:
        self.peft_type = PeftType.IA3
        super().__post_init__()
        for name in ("target_modules", "exclude_modules", "feedforward_modules"):
            if isinstance(getattr(self, name), (set, tuple)):
                setattr(self, name, sorted(getattr(self, name)))
        if isinstance(self.feedforward_modules, list) and isinstance(self.target_modules, list):
            extra = set(self.feedforward_modules) - set(self.target_modules)
            if extra:
                raise ValueError(f"feedforward_modules {sorted(extra)} are not in "
                                 f"target_modules {self.target_modules}: they must be a subset.")


@dataclass
class PromptLearningConfig(PeftConfig):
    """Virtual tokens before the input: num_virtual_tokens, and the base's sizes (token_dim,
    num_layers, num_attention_heads), filled from the model's config when left unset."""

    num_virtual_tokens: int | None = None
    token_dim: int | None = None
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens <= 0:
            raise ValueError(f"{type(self).__name__} needs num_virtual_tokens, a positive int; "
                             f"got {self.num_virtual_tokens!r}.")

    @property
    def is_prompt_learning(self) -> bool:
        return True


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning: trained embeddings of virtual tokens, initialised at random, from the
    vocabulary (SAMPLE_VOCAB) or from the embeddings of a text (TEXT, with its tokenizer)."""

    prompt_tuning_init: PromptTuningInit | str = PromptTuningInit.RANDOM
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict | None = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType.PROMPT_TUNING
        super().__post_init__()
        self.prompt_tuning_init = _enum(PromptTuningInit, self.prompt_tuning_init,
                                        "prompt_tuning_init")
        if self.prompt_tuning_init is PromptTuningInit.TEXT and not (
                self.prompt_tuning_init_text and self.tokenizer_name_or_path):
            raise ValueError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text and "
                             "tokenizer_name_or_path.")
        if self.tokenizer_kwargs and self.prompt_tuning_init is not PromptTuningInit.TEXT:
            raise ValueError("tokenizer_kwargs only applies with prompt_tuning_init='TEXT'.")


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning: trained keys and values of virtual tokens in every attention layer
    (through a two-layer MLP of width encoder_hidden_size when prefix_projection is set)."""

    unsupported: ClassVar[dict[str, tuple]] = {"init_weights": (None,)}

    encoder_hidden_size: int | None = None
    prefix_projection: bool = False
    init_weights: Any = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType.PREFIX_TUNING
        super().__post_init__()


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning: virtual token embeddings produced by a small MLP (or LSTM + MLP) encoder."""

    encoder_reparameterization_type: PromptEncoderReparameterizationType | str = \
        PromptEncoderReparameterizationType.MLP
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.peft_type = PeftType.P_TUNING
        super().__post_init__()
        self.encoder_reparameterization_type = _enum(
            PromptEncoderReparameterizationType, self.encoder_reparameterization_type,
            "encoder_reparameterization_type")


CONFIGS: dict[str, type[PeftConfig]] = {
    "LORA": LoraConfig, "IA3": IA3Config, "PROMPT_TUNING": PromptTuningConfig,
    "PREFIX_TUNING": PrefixTuningConfig, "P_TUNING": PromptEncoderConfig,
}


def config_class(peft_type: str | PeftType) -> type[PeftConfig]:
    key = peft_type.value if isinstance(peft_type, PeftType) else str(peft_type)
    try:
        return CONFIGS[key]
    except KeyError:
        raise ValueError(f"Adapter type {key!r} is not supported by Cove: it loads "
                         f"{', '.join(sorted(CONFIGS))}.") from None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
