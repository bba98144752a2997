"""`cove sft` and `cove dpo`: a model, a dataset and the trainer's config fields as flags, as
TRL's `trl sft` / `trl dpo` take them.

    cove sft --model_name_or_path my-org/base --dataset_name my-org/chats \\
        --output_dir base-sft --learning_rate 2e-5 --packing --use_peft --lora_r 16

Every field of ScriptArguments, the trainer's config (SFTConfig, DPOConfig) and ModelConfig is a
flag, spelt with underscores or dashes; a bool flag alone means true (`--packing`), or takes a
value (`--packing false`); a list takes several values; a dict takes a JSON object. The dataset
is a Hub id or a local .json/.jsonl/.csv/.parquet/.txt file (its rows are the train split).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# a local dataset file's extension -> the packaged builder that reads it
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet",
             ".txt": "text", ".arrow": "arrow"}


@dataclass
class ScriptArguments:
    """Which dataset a script trains on (TRL's ScriptArguments)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "a Hub id, or a local .json/.jsonl/.csv/.parquet/.txt "
                                        "file"})
    dataset_config: str | None = field(default=None,
                                       metadata={"help": "the dataset's configuration name"})
    dataset_train_split: str = field(default="train", metadata={"help": "the split to train on"})
    dataset_test_split: str = field(
        default="test", metadata={"help": "the split to evaluate on (with --eval_strategy)"})
    dataset_streaming: bool = field(default=False,
                                    metadata={"help": "stream the dataset instead of downloading"})


@dataclass
class ModelConfig:
    """Which model a script trains, and its adapter (TRL's ModelConfig)."""

    model_name_or_path: str | None = field(default=None,
                                           metadata={"help": "a Hub id or a local folder"})
    model_revision: str = field(default="main", metadata={"help": "branch, tag or commit"})
    dtype: str | None = field(
        default="float32", metadata={"help": "the weights' dtype: float32, bfloat16, float16 "
                                             "or auto"})
    use_peft: bool = field(default=False, metadata={"help": "train a LoRA adapter"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "LoRA target modules (default: the model family's)"})
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "modules trained fully and saved with the adapter"})
    lora_task_type: str = field(default="CAUSAL_LM",
                                metadata={"help": "LoRA task type (SEQ_CLS for reward models)"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA scaling"})
    use_dora: bool = field(default=False, metadata={"help": "DoRA"})
    load_in_8bit: bool = field(default=False, metadata={"help": "int8 base (with LoRA)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "4-bit base (QLoRA)"})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "nf4 or fp4"})
    use_bnb_nested_quant: bool = field(default=False,
                                       metadata={"help": "double quantisation of the scales"})


def get_peft_config(model_args: ModelConfig) -> Any:
    """The LoraConfig `model_args` describe, or None without --use_peft."""
    if not model_args.use_peft:
        return None
    from cove.peft import LoraConfig

    return LoraConfig(task_type=model_args.lora_task_type, r=model_args.lora_r,
                      target_modules=model_args.lora_target_modules,
                      lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      bias="none", use_rslora=model_args.use_rslora,
                      use_dora=model_args.use_dora,
                      modules_to_save=model_args.lora_modules_to_save)


def get_quantization_config(model_args: ModelConfig) -> Any:
    """The BitsAndBytesConfig `model_args` describe (4-bit or 8-bit), or None."""
    from cove.models.quantization import BitsAndBytesConfig

    if model_args.load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=model_args.dtype,
                                  bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
                                  bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant)
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


# -- flags from dataclass fields ----------------------------------------------------------------

def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _scalar(kinds: list[type]) -> Any:
    """A parser for a value that may be of several kinds (e.g. `float | str`): the first that
    reads it."""
    def read(text: str) -> Any:
        for kind in kinds:
            try:
                return _bool(text) if kind is bool else kind(text)
            except (ValueError, argparse.ArgumentTypeError):
                continue
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(k.__name__ for k in kinds)}, got {text!r}")
    return read


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any,
               seen: set[str]) -> None:
    if f.name in seen:  # the same field in two dataclasses: the first one takes the flag
        return
    seen.add(f.name)
    names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
    options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                               "help": f.metadata.get("help")}
    args = [a for a in typing.get_args(hint) if a is not type(None)] \
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else [hint]
    origins = [typing.get_origin(a) or a for a in args]
    if dict in origins:
        options["type"] = json.loads
        options["metavar"] = "JSON"
    elif list in origins:
        inner = typing.get_args(args[origins.index(list)])
        options["type"] = _scalar([inner[0]] if inner and isinstance(inner[0], type) else [str])
        options["nargs"] = "+"
    elif args == [bool]:
        options.update(type=_bool, nargs="?", const=True, metavar="BOOL")
    else:
        kinds = [a for a in args if a in (bool, int, float, str)]
        if typing.get_origin(args[0]) is typing.Literal:
            options["choices"] = list(typing.get_args(args[0]))
        elif len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], str):
            kinds = [str]  # a str Enum: the config turns the name into the member
        options["type"] = _scalar(kinds or [str])
    parser.add_argument(*names, **options)


def build_parser(prog: str, classes: tuple[type, ...]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    seen: set[str] = set()
    for cls in classes:
        group = parser.add_argument_group(cls.__name__)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                _add_field(group, f, hints[f.name], seen)
    return parser


def parse(prog: str, config_class: type, argv: list[str]) -> tuple[Any, Any, ModelConfig]:
    """(ScriptArguments, the config, ModelConfig) from the command line `argv`."""
    classes = (ScriptArguments, config_class, ModelConfig)
    given = vars(build_parser(prog, classes).parse_args(argv))
    out = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        out.append(cls(**{k: given.pop(k) for k in list(given) if k in names}))
    return tuple(out)  # type: ignore[return-value]


def load_training_dataset(script_args: ScriptArguments) -> Any:
    """The dataset `--dataset_name` names: a local file's rows as the train split, or a Hub
    dataset's splits."""
    from cove.datasets import load_dataset

    name = script_args.dataset_name
    if not name:
        raise ValueError("--dataset_name is required: a Hub dataset id or a local file")
    if os.path.isfile(name):
        builder = _BUILDERS.get(os.path.splitext(name)[1].lower())
        if builder is None:
            raise ValueError(f"cannot read {name}: a local dataset is a "
                             f"{', '.join(sorted(_BUILDERS))} file")
        return load_dataset(builder, data_files={script_args.dataset_train_split: name},
                            streaming=script_args.dataset_streaming)
    return load_dataset(name, name=script_args.dataset_config,
                        streaming=script_args.dataset_streaming)


def main(kind: str, argv: list[str]) -> int:
    """Run `cove sft` (kind "sft") or `cove dpo` ("dpo"): train, save, and push when asked."""
    if kind == "sft":
        from cove.trl.sft_config import SFTConfig as config_class
        from cove.trl.sft_trainer import SFTTrainer as trainer_class
    elif kind == "dpo":
        from cove.trl.dpo_config import DPOConfig as config_class
        from cove.trl.dpo_trainer import DPOTrainer as trainer_class
    else:
        raise ValueError(f"no training script {kind!r}: there are sft and dpo")
    script_args, args, model_args = parse(f"cove {kind}", config_class, argv)
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: a Hub id or a local folder")
    init = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    quantization = get_quantization_config(model_args)
    if quantization is not None:  # its dict form: the config is saved as JSON with checkpoints
        init["quantization_config"] = quantization.to_dict()
    args.model_init_kwargs = {**init, **(args.model_init_kwargs or {})}

    dataset = load_training_dataset(script_args)
    if script_args.dataset_train_split not in dataset:
        raise ValueError(f"the dataset has no split {script_args.dataset_train_split!r} (it has "
                         f"{', '.join(dataset)}): pass --dataset_train_split")
    evaluating = str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "no"
    if evaluating and script_args.dataset_test_split not in dataset:
        raise ValueError(f"--eval_strategy needs the split {script_args.dataset_test_split!r}, "
                         f"which the dataset lacks (it has {', '.join(dataset)}): pass "
                         "--dataset_test_split")
    trainer = trainer_class(
        model=model_args.model_name_or_path, args=args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if evaluating else None,
        peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    trainer.accelerator.print(f"Model saved to {args.output_dir}")
    if args.push_to_hub:
        trainer.push_to_hub()
        trainer.accelerator.print(f"Model pushed to {trainer.hub_model_id}")
    return 0
