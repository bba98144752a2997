"""The README.md model card `Trainer.push_to_hub` writes: Hub metadata, the training
hyper-parameters, the results table from the log history, and the library versions."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from cove.trainer.training_args import TrainingArguments


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metric_title(key: str) -> str:
    """eval_accuracy -> Accuracy; eval_f1_macro -> F1 Macro (as transformers' table heads)."""
    name = key.removeprefix("eval_")
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


_SKIPPED = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step")


def results_table(log_history: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The card's table: one row per evaluation (with the last training loss before it), or,
    for a run without evaluation, one row per training log."""
    evaluations = [e for e in log_history if "eval_loss" in e]
    train_logs = [e for e in log_history if "loss" in e]
    if not evaluations:
        return (["Training Loss", "Epoch", "Step"],
                [[_value(e["loss"]), _value(e.get("epoch", "")), str(e.get("step", ""))]
                 for e in train_logs])
    metrics = [k for k in evaluations[0] if k.startswith("eval_") and k not in _SKIPPED]
    head = ["Training Loss", "Epoch", "Step", "Validation Loss",
            *(_metric_title(k) for k in metrics if k != "eval_loss")]
    rows = []
    for entry in evaluations:
        before = [e["loss"] for e in train_logs if e.get("step", 0) <= entry.get("step", 0)]
        rows.append([_value(before[-1]) if before else "No log", _value(entry.get("epoch", "")),
                     str(entry.get("step", "")), _value(entry["eval_loss"]),
                     *(_value(entry.get(k, "")) for k in metrics if k != "eval_loss")])
    return head, rows


def hyperparameters(args: TrainingArguments, world_size: int, max_steps: int) -> dict[str, Any]:
    """The hyper-parameters the card lists (transformers' names)."""
    params: dict[str, Any] = {
        "learning_rate": args.learning_rate,
        "train_batch_size": args.per_device_train_batch_size,
        "eval_batch_size": args.per_device_eval_batch_size,
        "seed": args.seed,
    }
    if args.data_seed is not None:
        params["data_seed"] = args.data_seed
    if world_size > 1:
        params["distributed_type"] = "multi-process"
        params["num_devices"] = world_size
    if args.gradient_accumulation_steps > 1:
        params["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    total = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    if total != args.per_device_train_batch_size:
        params["total_train_batch_size"] = total
    optim = getattr(args.optim, "value", args.optim)
    params["optimizer"] = (f"Use {optim} with betas=({args.adam_beta1},{args.adam_beta2}) and "
                           f"epsilon={args.adam_epsilon} and optimizer_args="
                           f"{args.optim_args or 'No additional optimizer arguments'}"
                           if optim.startswith("adamw") else f"Use {optim}")
    params["lr_scheduler_type"] = getattr(args.lr_scheduler_type, "value",
                                          args.lr_scheduler_type)
    if args.warmup_steps:
        params["lr_scheduler_warmup_steps"] = args.get_warmup_steps(max_steps)
    if args.max_steps > 0:
        params["training_steps"] = args.max_steps
    else:
        params["num_epochs"] = args.num_train_epochs
    if args.mixed_precision != "no":
        params["mixed_precision_training"] = f"Native AMP ({args.mixed_precision})"
    if args.weight_decay:
        params["weight_decay"] = args.weight_decay
    if args.max_grad_norm:
        params["max_grad_norm"] = args.max_grad_norm
    return params


def _versions() -> list[str]:
    import torch

    try:
        cove = importlib.metadata.version("cove")
    except importlib.metadata.PackageNotFoundError:
        import cove as cove_package

        cove = cove_package.__version__
    return [f"Cove {cove}", f"Pytorch {torch.__version__}", f"Python {platform.python_version()}"]


def _yaml_list(name: str, values: list[str]) -> list[str]:
    return [f"{name}:", *(f"- {v}" for v in values)] if values else []


def model_card(model_name: str, args: TrainingArguments, log_history: list[dict[str, Any]],
               world_size: int, max_steps: int, *, finetuned_from: str | None = None,
               tags: list[str] | None = None, language: str | None = None,
               license: str | None = None, dataset: str | list[str] | None = None,
               tasks: str | list[str] | None = None) -> str:
    """The README.md text (YAML metadata first, as the Hub reads it)."""
    tags = list(dict.fromkeys([*(tags or []), "generated_from_trainer"]))
    datasets = [dataset] if isinstance(dataset, str) else list(dataset or [])
    tasks = [tasks] if isinstance(tasks, str) else list(tasks or [])
    meta = ["library_name: transformers"]
    if license:
        meta.append(f"license: {license}")
    if language:
        meta.append(f"language: {language}")
    if finetuned_from:
        meta.append(f"base_model: {finetuned_from}")
    meta += _yaml_list("tags", tags) + _yaml_list("datasets", datasets)
    if tasks:
        meta.append(f"pipeline_tag: {tasks[0]}")
    meta += ["model-index:", f"- name: {model_name}", "  results: []"]

    lines = ["---", *meta, "---", "", f"# {model_name}", ""]
    base = f"[{finetuned_from}](https://huggingface.co/{finetuned_from})" if finetuned_from \
        else "a model"
    on = f"the {', '.join(datasets)} dataset" if datasets else "an unknown dataset"
    lines.append(f"This model is a fine-tuned version of {base} on {on}, trained with Cove's "
                 "Trainer.")
    evaluations = [e for e in log_history if "eval_loss" in e]
    if evaluations:
        lines += ["It achieves the following results on the evaluation set:"]
        lines += [f"- {_metric_title(k)}: {_value(v)}" for k, v in evaluations[-1].items()
                  if k.startswith("eval_") and k not in _SKIPPED]
    lines += ["", "## Training procedure", "", "### Training hyperparameters", "",
              "The following hyperparameters were used during training:"]
    lines += [f"- {k}: {v}" for k, v in hyperparameters(args, world_size, max_steps).items()]
    head, rows = results_table(log_history)
    if rows:
        lines += ["", "### Training results", "", "| " + " | ".join(head) + " |",
                  "|" + "|".join(":---:" for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "### Framework versions", "", *(f"- {v}" for v in _versions()), ""]
    return "\n".join(lines)
