"""TRL's dataset formats and the functions that convert between them (trl.data_utils' names).

A dataset row is one of these formats, each "standard" (strings) or "conversational" (lists of
{"role", "content"} messages):

    language modeling        text | messages
    prompt-only              prompt
    prompt-completion        prompt, completion
    preference               prompt, chosen, rejected   (or chosen, rejected: implicit prompt)
    unpaired preference      prompt, completion, label

`dataset_format(row)` names a row's format; `require_format` is how each trainer refuses a dataset
it cannot train on, naming the columns it needs. `apply_chat_template` renders a conversational
row into a standard one with the tokenizer's chat template, keeping the prompt/completion split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# the columns that carry text, in every format
_TEXT_KEYS = ("prompt", "chosen", "rejected", "completion", "messages")

# format name -> its columns (a row is in the format whose columns it has, the largest first)
FORMATS: dict[str, tuple[str, ...]] = {
    "unpaired preference": ("prompt", "completion", "label"),
    "preference": ("prompt", "chosen", "rejected"),
    "preference (implicit prompt)": ("chosen", "rejected"),
    "prompt-completion": ("prompt", "completion"),
    "prompt-only": ("prompt",),
    "language modeling (conversational)": ("messages",),
    "language modeling": ("text",),
}


def is_conversational(example: dict[str, Any]) -> bool:
    """Whether the row's text columns hold messages (lists of dicts with a "role")."""
    for key in _TEXT_KEYS:
        value = example.get(key)
        if isinstance(value, list) and value:
            return isinstance(value[0], dict) and "role" in value[0]
    return False


def dataset_format(example: dict[str, Any]) -> str | None:
    """The name of the row's format (a key of FORMATS), or None when it is in none."""
    for name, columns in FORMATS.items():
        if all(c in example for c in columns):
            return name
    return None


def require_format(columns: Sequence[str], trainer: str, accepted: Sequence[str],
                   field_map: dict[str, str] | None = None) -> str:
    """The format the dataset `columns` are in, among the `accepted` ones; else a ValueError
    that names the trainer, the columns each accepted format needs and those the dataset has.
    `field_map` names a config field that selects a column (e.g. {"text": "dataset_text_field"})."""
    present = set(columns)
    for name in FORMATS:
        if name in accepted and all(c in present for c in FORMATS[name]):
            return name
    needs = "; ".join(f"{name}: {', '.join(repr(c) for c in FORMATS[name])}" for name in accepted)
    hint = ""
    if field_map:
        hint = " (" + ", ".join(f"the {c!r} column is named by {f}" for c, f in
                                field_map.items()) + ")"
    raise ValueError(f"{trainer} cannot train on a dataset with the columns "
                     f"{sorted(present)}: it needs the columns of one of these formats: "
                     f"{needs}{hint}")


def _render(processing_class: Any, messages: list, tools: list | None,
            example: dict[str, Any], template_kwargs: dict[str, Any], **kwargs: Any) -> str:
    return processing_class.apply_chat_template(
        messages, tools=tools, tokenize=False, **example.get("chat_template_kwargs", {}),
        **template_kwargs, **kwargs)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


def apply_chat_template(example: dict[str, Any], processing_class: Any,
                        tools: list[dict | Callable] | None = None,
                        **template_kwargs: Any) -> dict[str, Any]:
    """Render a conversational row into a standard one with the tokenizer's chat template.

    "messages" becomes "text". A prompt ending with a user or tool turn gets the generation
    prompt; one ending with an assistant turn is continued. A completion (or chosen/rejected) is
    the text the whole conversation adds after the prompt: both are rendered and the prompt is
    cut at their common prefix, so templates that render a prompt differently on its own still
    split cleanly. A "chat_template_kwargs" column's dict is passed to the template.
    """
    tools = tools or None  # an empty list would still render tool boilerplate in some templates
    keys = {k for k in example if k in (*_TEXT_KEYS, "label")}
    if keys not in ({"messages"}, {"prompt"}, {"prompt", "completion"},
                    {"prompt", "chosen", "rejected"}, {"chosen", "rejected"},
                    {"prompt", "completion", "label"}):
        raise KeyError(f"Invalid keys in the example: {keys}: a conversational row needs "
                       "'messages', 'prompt', 'prompt'+'completion', 'prompt'+'chosen'+"
                       "'rejected', 'chosen'+'rejected' or 'prompt'+'completion'+'label'")
    out: dict[str, Any] = {}
    if "messages" in example:
        out["text"] = _render(processing_class, example["messages"], tools, example,
                              template_kwargs)
    if "prompt" in example:
        last = example["prompt"][-1]["role"]
        if last not in ("user", "tool", "assistant"):
            raise ValueError(f"Invalid role in the last message: {last}: a prompt ends with a "
                             "'user', 'tool' or 'assistant' message")
        prompt = _render(processing_class, example["prompt"], tools, example, template_kwargs,
                         add_generation_prompt=last != "assistant",
                         continue_final_message=last == "assistant")
        whole = {key: _render(processing_class, example["prompt"] + example[key], tools,
                              example, template_kwargs)
                 for key in ("chosen", "rejected", "completion") if key in example}
        for text in whole.values():
            prompt = _common_prefix(prompt, text)
        out["prompt"] = prompt
        for key, text in whole.items():
            out[key] = text[len(prompt):]
    else:
        for key in ("chosen", "rejected"):
            if key in example:
                out[key] = _render(processing_class, example[key], tools, example,
                                   template_kwargs)
    if "label" in example:
        out["label"] = example["label"]
    return out


def maybe_apply_chat_template(example: dict[str, Any], processing_class: Any,
                              tools: list[dict | Callable] | None = None,
                              **template_kwargs: Any) -> dict[str, Any]:
    """`apply_chat_template` for a conversational row; a standard row is returned as it is."""
    if is_conversational(example):
        return apply_chat_template(example, processing_class, tools, **template_kwargs)
    return example


def extract_prompt(example: dict[str, Sequence]) -> dict[str, Sequence]:
    """Split an implicit-prompt preference row: the prompt is what "chosen" and "rejected" share
    at the start (whole messages, or characters for strings, a space before the split going to
    the completions). When one is a prefix of the other, its last item stays a completion."""
    chosen, rejected = example["chosen"], example["rejected"]
    shortest = min(len(chosen), len(rejected))
    split = 0
    while split < shortest and chosen[split] == rejected[split]:
        split += 1
    if split == shortest:  # one is a prefix of the other: its last item stays a completion
        split = max(shortest - 1, 0)
    elif split > 0 and chosen[split - 1] == " ":
        split -= 1
    return {"prompt": chosen[:split], "chosen": chosen[split:], "rejected": rejected[split:]}


def maybe_extract_prompt(example: dict[str, Any]) -> dict[str, Any]:
    """`extract_prompt` for a preference row whose prompt is implicit; other rows as they are.
    A "prompt" column of another kind than the completions (text beside conversations) does not
    count as the prompt."""
    if "chosen" not in example or "rejected" not in example:
        return example
    if "prompt" in example and (is_conversational({"chosen": example["chosen"]})
                                == is_conversational({"prompt": example["prompt"]})):
        return example
    return extract_prompt({"chosen": example["chosen"], "rejected": example["rejected"]})


def _unpair_batch(batch: dict[str, list]) -> dict[str, list]:
    n = len(batch["chosen"])
    out = {"completion": batch["chosen"] + batch["rejected"], "label": [True] * n + [False] * n}
    for key, values in batch.items():
        if key not in ("chosen", "rejected"):
            out[key] = values + values
    return out


def column_names(dataset: Any) -> list[str]:
    """A dataset's columns (a DatasetDict's first split's; an iterable dataset of unknown
    features: its first row's keys)."""
    if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):
        dataset = next(iter(dataset.values()))
    names = dataset.column_names
    if isinstance(names, dict):  # a DatasetDict: split -> names
        names = next(iter(names.values()))
    if names is None:  # an IterableDataset of unknown features
        names = list(next(iter(dataset)).keys())
    return list(names)


def unpair_preference_dataset(dataset: Any, **map_kwargs: Any) -> Any:
    """A paired preference dataset as an unpaired one: each pair gives a (prompt, chosen, True)
    and a (prompt, rejected, False) row; other columns are repeated."""
    return dataset.map(_unpair_batch, batched=True, remove_columns=column_names(dataset),
                       **map_kwargs)


def maybe_unpair_preference_dataset(dataset: Any, num_proc: int | None = None,
                                    desc: str | None = None) -> Any:
    """`unpair_preference_dataset` if the dataset has "chosen" and "rejected"; else as it is."""
    names = column_names(dataset)
    if "chosen" in names and "rejected" in names:
        return unpair_preference_dataset(dataset, num_proc=num_proc, desc=desc)
    return dataset


def is_conversational_from_value(example: dict[str, Any]) -> bool:
    """Whether the row has "conversations" in the from/value (ShareGPT) form."""
    value = example.get("conversations")
    return (isinstance(value, list) and bool(value) and isinstance(value[0], dict)
            and "from" in value[0] and "value" in value[0])


def maybe_convert_to_chatml(example: dict[str, Any]) -> dict[str, Any]:
    """from/value messages to role/content, and "conversations" to "messages" (in place)."""
    for key in (*_TEXT_KEYS, "conversations"):
        if isinstance(example.get(key), list):
            for message in example[key]:
                if isinstance(message, dict):
                    if "from" in message:
                        message["role"] = message.pop("from")
                    if "value" in message:
                        message["content"] = message.pop("value")
    if "conversations" in example:
        example["messages"] = example.pop("conversations")
    return example
