"""Data collators: lists of examples -> one batch of tensors (transformers' names and outputs).

    collator = DataCollatorWithPadding(tokenizer)
    batch = collator([tokenizer("a text"), tokenizer("a longer text")])  # padded, as tensors

Each collator returns PyTorch tensors ("pt", the default) or NumPy arrays ("np"). The masked-LM
collator draws its random masks in the order transformers does, so with the same seed (or the
same global RNG state) it masks the same tokens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_FRAMEWORKS = ("pt", "np")


def _check_framework(return_tensors: str) -> None:
    if return_tensors not in _FRAMEWORKS:
        raise ValueError(f"return_tensors must be 'pt' (PyTorch) or 'np' (NumPy), got "
                         f"{return_tensors!r}")


def _check_features(features: Sequence[Any]) -> None:
    if not isinstance(features, Sequence) or isinstance(features, (str, bytes, Mapping)):
        raise TypeError(f"a collator takes a list of examples, got {type(features).__name__}")
    if len(features) == 0:
        raise ValueError("a collator needs at least one example to make a batch")


class DataCollatorMixin:
    """Dispatches a call to `torch_call` or `numpy_call` after `return_tensors`."""

    return_tensors: str = "pt"

    def __call__(self, features: list[Any], return_tensors: str | None = None) -> dict[str, Any]:
        return_tensors = return_tensors or self.return_tensors
        _check_framework(return_tensors)
        _check_features(features)
        if return_tensors == "pt":
            return self.torch_call(features)
        return self.numpy_call(features)


def default_data_collator(features: list[Any], return_tensors: str = "pt") -> dict[str, Any]:
    """Stack examples of equal shapes into a batch, without padding.

    Examples are dicts (or objects, read with `vars`); the keys of the first one are kept,
    except those whose value is None or a string. A `label` (one number per example) or
    `label_ids` (a list per example) becomes `labels`: int64 for integers, float32 otherwise.
    """
    _check_framework(return_tensors)
    _check_features(features)
    if not isinstance(features[0], Mapping):
        features = [vars(f) for f in features]
    first = features[0]
    if return_tensors == "pt":
        return _torch_default_collate(features, first)
    return _numpy_default_collate(features, first)


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer))


def _torch_default_collate(features: list[Mapping], first: Mapping) -> dict[str, Any]:
    import torch

    batch: dict[str, Any] = {}
    if first.get("label") is not None:
        label = first["label"].item() if isinstance(first["label"], torch.Tensor) else first["label"]
        dtype = torch.long if _is_integer(label) else torch.float
        batch["labels"] = torch.tensor([f["label"] for f in features], dtype=dtype)
    elif first.get("label_ids") is not None:
        if isinstance(first["label_ids"], torch.Tensor):
            batch["labels"] = torch.stack([f["label_ids"] for f in features])
        else:
            dtype = torch.long if _is_integer(first["label_ids"][0]) else torch.float
            batch["labels"] = torch.tensor([f["label_ids"] for f in features], dtype=dtype)
    for key, value in first.items():
        if key in ("label", "label_ids") or value is None or isinstance(value, str):
            continue
        values = [f[key] for f in features]
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(value, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        else:
            batch[key] = torch.tensor(values)
    return batch


def _numpy_default_collate(features: list[Mapping], first: Mapping) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    if first.get("label") is not None:
        label = first["label"].item() if isinstance(first["label"], np.ndarray) else first["label"]
        dtype = np.int64 if _is_integer(label) else np.float32
        batch["labels"] = np.array([f["label"] for f in features], dtype=dtype)
    elif first.get("label_ids") is not None:
        if isinstance(first["label_ids"], np.ndarray):
            batch["labels"] = np.stack([f["label_ids"] for f in features])
        else:
            dtype = np.int64 if _is_integer(first["label_ids"][0]) else np.float32
            batch["labels"] = np.array([f["label_ids"] for f in features], dtype=dtype)
    for key, value in first.items():
        if key in ("label", "label_ids") or value is None or isinstance(value, str):
            continue
        values = [f[key] for f in features]
        batch[key] = np.stack(values) if isinstance(value, np.ndarray) else np.array(values)
    return batch


@dataclass
class DefaultDataCollator(DataCollatorMixin):
    """`default_data_collator` as an object, with `return_tensors` chosen once."""

    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        _check_framework(self.return_tensors)

    def __call__(self, features: list[Any], return_tensors: str | None = None) -> dict[str, Any]:
        return default_data_collator(features, return_tensors or self.return_tensors)


def _rename_labels(batch: Any) -> Any:
    for old in ("label", "label_ids"):
        if old in batch:
            batch["labels"] = batch.pop(old)
    return batch


@dataclass
class DataCollatorWithPadding:
    """Pads the examples with `tokenizer.pad` (to the longest, `max_length`, or a multiple of
    `pad_to_multiple_of`); a `label` or `label_ids` key becomes `labels`."""

    tokenizer: Any
    padding: bool | str = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        _check_framework(self.return_tensors)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        _check_features(features)
        batch = self.tokenizer.pad(features, padding=self.padding, max_length=self.max_length,
                                   pad_to_multiple_of=self.pad_to_multiple_of,
                                   return_tensors=self.return_tensors)
        return _rename_labels(batch)


@dataclass
class DataCollatorForTokenClassification(DataCollatorMixin):
    """Pads the inputs with the tokenizer, and the per-token labels with `label_pad_token_id`
    (-100, which losses ignore) on the tokenizer's padding side."""

    tokenizer: Any
    padding: bool | str = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = -100
    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        _check_framework(self.return_tensors)

    def _pad_labels(self, features: list[Mapping], return_tensors: str) -> tuple[Any, str, Any]:
        label_name = "label" if "label" in features[0] else "labels"
        labels = [f[label_name] for f in features] if label_name in features[0] else None
        inputs = [{k: v for k, v in f.items() if k != label_name} for f in features]
        batch = self.tokenizer.pad(inputs, padding=self.padding, max_length=self.max_length,
                                   pad_to_multiple_of=self.pad_to_multiple_of,
                                   return_tensors=return_tensors)
        if labels is None:
            return batch, label_name, None
        length = np.asarray(batch["input_ids"]).shape[1]
        pad = self.label_pad_token_id
        rows = []
        for label in labels:
            label = label.tolist() if hasattr(label, "tolist") else list(label)
            if len(label) > length:
                raise ValueError(f"an example has {len(label)} labels for {length} tokens: the "
                                 "labels must be aligned with input_ids (one per token)")
            fill = [pad] * (length - len(label))
            rows.append(label + fill if self.tokenizer.padding_side == "right" else fill + label)
        return batch, label_name, rows

    def torch_call(self, features: list[Mapping]) -> dict[str, Any]:
        import torch

        batch, label_name, rows = self._pad_labels(features, "pt")
        if rows is not None:
            batch[label_name] = torch.tensor(rows, dtype=torch.int64)
        return batch

    def numpy_call(self, features: list[Mapping]) -> dict[str, Any]:
        batch, label_name, rows = self._pad_labels(features, "np")
        if rows is not None:
            batch[label_name] = np.array(rows, dtype=np.int64)
        return batch


def _pad_id_rows(examples: list[Any], tokenizer: Any, pad_to_multiple_of: int | None,
                 ) -> np.ndarray:
    """Lists of ids -> one int64 array, padded on the tokenizer's side where lengths differ."""
    rows = [np.asarray(e.tolist() if hasattr(e, "tolist") else e, dtype=np.int64)
            for e in examples]
    length = max(len(r) for r in rows)
    if all(len(r) == length for r in rows) and (pad_to_multiple_of is None
                                                 or length % pad_to_multiple_of == 0):
        return np.stack(rows)
    if tokenizer.pad_token is None:
        raise ValueError("You are attempting to pad samples but the tokenizer you are using "
                         f"({type(tokenizer).__name__}) does not have a pad token.")
    if pad_to_multiple_of is not None and length % pad_to_multiple_of != 0:
        length = (length // pad_to_multiple_of + 1) * pad_to_multiple_of
    out = np.full((len(rows), length), tokenizer.pad_token_id, dtype=np.int64)
    for i, row in enumerate(rows):
        if tokenizer.padding_side == "right":
            out[i, :len(row)] = row
        else:
            out[i, length - len(row):] = row
    return out


@dataclass
class DataCollatorForLanguageModeling(DataCollatorMixin):
    """Batches for language modelling: padded inputs and their `labels`.

    With `mlm=True` (masked LM) each token other than special ones is picked with
    `mlm_probability`; a picked token becomes the mask token (`mask_replace_prob`), a random
    token (`random_replace_prob`) or stays, and labels are -100 everywhere but at picked tokens.
    With `mlm=False` (causal LM) labels are the input ids, -100 at padding (the model shifts
    them). Examples are dicts (a `special_tokens_mask` in them is used, then dropped) or lists
    of ids. `seed` gives the collator its own generator (one per DataLoader worker: seed + the
    worker's id); without it, masks come from the global RNG.
    """

    tokenizer: Any
    mlm: bool = True
    mlm_probability: float | None = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_framework(self.return_tensors)
        if self.mlm:
            if self.tokenizer.mask_token is None:
                raise ValueError("This tokenizer does not have a mask token which is necessary "
                                 "for masked language modeling. You should pass `mlm=False` to "
                                 "train on causal language modeling instead.")
            if self.mlm_probability is None or not 0 <= self.mlm_probability <= 1:
                raise ValueError(f"mlm_probability should be between 0 and 1, got "
                                 f"{self.mlm_probability}")
            self.mlm_probability = float(self.mlm_probability)
        for name in ("mask_replace_prob", "random_replace_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} should be between 0 and 1, got {getattr(self, name)}")
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("The sum of mask_replace_prob and random_replace_prob should not "
                             "exceed 1")
        self.mask_replace_prob = float(self.mask_replace_prob)
        self.random_replace_prob = float(self.random_replace_prob)
        self.generator: Any = None
        self._generator_pid: int | None = None

    def _make_generator(self, framework: str) -> None:
        """This process's generator: `seed`, plus the worker's id inside a DataLoader worker."""
        import torch

        worker = torch.utils.data.get_worker_info()
        seed = self.seed + (worker.id if worker is not None else 0)
        self.generator = (torch.Generator().manual_seed(seed) if framework == "pt"
                          else np.random.default_rng(seed))
        self._generator_pid = os.getpid()

    def _batch(self, examples: list[Any], framework: str) -> dict[str, Any]:
        if self.seed is not None:
            import torch

            kind = torch.Generator if framework == "pt" else np.random.Generator
            if not isinstance(self.generator, kind) or self._generator_pid != os.getpid():
                self._make_generator(framework)
        if isinstance(examples[0], Mapping):
            return self.tokenizer.pad(examples, return_tensors=framework,
                                      pad_to_multiple_of=self.pad_to_multiple_of)
        ids = _pad_id_rows(examples, self.tokenizer, self.pad_to_multiple_of)
        if framework == "pt":
            import torch

            return {"input_ids": torch.from_numpy(ids)}
        return {"input_ids": ids}

    def _special_tokens_mask(self, input_ids: Any) -> list[list[int]]:
        return [self.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                for row in input_ids.tolist()]

    def torch_call(self, examples: list[Any]) -> dict[str, Any]:
        batch = self._batch(examples, "pt")
        special_tokens_mask = batch.pop("special_tokens_mask", None)
        if self.mlm:
            batch["input_ids"], batch["labels"] = self.torch_mask_tokens(
                batch["input_ids"], special_tokens_mask=special_tokens_mask)
        else:
            batch["labels"] = self._causal_labels(batch["input_ids"].clone())
        return batch

    def numpy_call(self, examples: list[Any]) -> dict[str, Any]:
        batch = self._batch(examples, "np")
        special_tokens_mask = batch.pop("special_tokens_mask", None)
        if self.mlm:
            batch["input_ids"], batch["labels"] = self.numpy_mask_tokens(
                batch["input_ids"], special_tokens_mask=special_tokens_mask)
        else:
            batch["labels"] = self._causal_labels(np.copy(batch["input_ids"]))
        return batch

    def _causal_labels(self, labels: Any) -> Any:
        if self.tokenizer.pad_token_id is not None:
            labels[labels == self.tokenizer.pad_token_id] = -100
        return labels

    def torch_mask_tokens(self, inputs: Any, special_tokens_mask: Any | None = None,
                          ) -> tuple[Any, Any]:
        """Mask `inputs` (in place) for masked LM; returns them and the labels."""
        import torch

        labels = inputs.clone()
        if special_tokens_mask is None:
            special_tokens_mask = self._special_tokens_mask(labels)
        never = torch.as_tensor(special_tokens_mask).bool()
        # Draw order and shapes as transformers': the same seed picks the same tokens.
        probability = torch.full(labels.shape, self.mlm_probability).masked_fill_(never, 0.0)
        picked = torch.bernoulli(probability, generator=self.generator).bool()
        labels[~picked] = -100
        to_mask = picked & torch.bernoulli(torch.full(labels.shape, self.mask_replace_prob),
                                           generator=self.generator).bool()
        inputs[to_mask] = self.tokenizer.convert_tokens_to_ids(self.tokenizer.mask_token)
        if self.mask_replace_prob == 1 or self.random_replace_prob == 0:
            return inputs, labels
        # of the picked tokens left, the share to randomise so that random_replace_prob of all
        # picked ones are
        share = self.random_replace_prob / (1 - self.mask_replace_prob)
        to_randomise = picked & ~to_mask & torch.bernoulli(
            torch.full(labels.shape, share), generator=self.generator).bool()
        random_ids = torch.randint(len(self.tokenizer), labels.shape, dtype=torch.long,
                                   generator=self.generator)
        inputs[to_randomise] = random_ids[to_randomise]
        return inputs, labels

    def numpy_mask_tokens(self, inputs: np.ndarray, special_tokens_mask: Any | None = None,
                          ) -> tuple[np.ndarray, np.ndarray]:
        """`torch_mask_tokens` for NumPy arrays (NumPy's generator, or its global RNG)."""
        rng = self.generator if self.generator is not None else np.random
        labels = np.copy(inputs)
        if special_tokens_mask is None:
            special_tokens_mask = self._special_tokens_mask(labels)
        probability = np.full(labels.shape, self.mlm_probability)
        probability[np.asarray(special_tokens_mask, dtype=bool)] = 0
        picked = rng.binomial(1, probability, size=probability.shape).astype(bool)
        labels[~picked] = -100
        to_mask = rng.binomial(1, self.mask_replace_prob, size=labels.shape).astype(bool) & picked
        inputs[to_mask] = self.tokenizer.mask_token_id
        if self.mask_replace_prob == 1 or self.random_replace_prob == 0:
            return inputs, labels
        share = self.random_replace_prob / (1 - self.mask_replace_prob)
        to_randomise = (rng.binomial(1, share, size=labels.shape).astype(bool)
                        & picked & ~to_mask)
        count = int(np.count_nonzero(to_randomise))
        if rng is np.random:
            random_ids = np.random.randint(0, len(self.tokenizer), size=count, dtype=np.int64)
        else:
            random_ids = rng.integers(0, len(self.tokenizer), size=count, dtype=np.int64)
        inputs[to_randomise] = random_ids
        return inputs, labels


@dataclass
class DataCollatorForSeq2Seq:
    """Batches for sequence-to-sequence models: inputs padded with the tokenizer, `labels`
    padded with `label_pad_token_id` (-100, which the loss ignores) on the tokenizer's padding
    side, to the longest (or `max_length` with padding="max_length"), rounded up to
    `pad_to_multiple_of`. Given the `model`, adds `decoder_input_ids`: the labels shifted right
    by its `prepare_decoder_input_ids_from_labels` (decoder start token first, -100 -> pad)."""

    tokenizer: Any
    model: Any = None
    padding: bool | str = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = -100
    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        _check_framework(self.return_tensors)

    def __call__(self, features: list[dict[str, Any]], return_tensors: str | None = None
                 ) -> dict[str, Any]:
        return_tensors = return_tensors or self.return_tensors
        _check_framework(return_tensors)
        _check_features(features)
        label_name = "label" if "label" in features[0] else "labels"
        labels = [f.get(label_name) for f in features] if label_name in features[0] else None
        if labels is not None and all(label is None for label in labels):
            labels = None  # {"labels": None} examples: no labels
        if labels is not None and any(label is None for label in labels):
            raise ValueError(f"some examples have {label_name!r} and others not: give every "
                             "example labels, or none")
        # the tokenizer pads the inputs only: it cannot pad labels with -100
        inputs = [{k: v for k, v in f.items() if k != label_name} for f in features]
        batch = self.tokenizer.pad(inputs, padding=self.padding, max_length=self.max_length,
                                   pad_to_multiple_of=self.pad_to_multiple_of,
                                   return_tensors=return_tensors)
        if labels is None:
            batch["labels"] = None
            return batch
        rows = [label.tolist() if hasattr(label, "tolist") else list(label) for label in labels]
        longest = max(len(r) for r in rows)
        if self.padding is False or self.padding == "do_not_pad":
            if any(len(r) != longest for r in rows):
                raise ValueError("with padding=False every example needs labels of the same "
                                 "length (they become one tensor): pad them, or use "
                                 "padding=True")
            length = longest
        else:
            length = self.max_length if self.padding == "max_length" and \
                self.max_length is not None else longest
            if self.pad_to_multiple_of is not None:
                multiple = self.pad_to_multiple_of
                length = (length + multiple - 1) // multiple * multiple
        if longest > length:
            raise ValueError(f"an example has {longest} labels, more than max_length="
                             f"{self.max_length}: truncate the labels when tokenizing them")
        pad = self.label_pad_token_id
        right = self.tokenizer.padding_side == "right"
        padded = [r + [pad] * (length - len(r)) if right else [pad] * (length - len(r)) + r
                  for r in rows]
        import torch

        label_tensor = torch.tensor(padded, dtype=torch.int64)
        batch["labels"] = label_tensor if return_tensors == "pt" else label_tensor.numpy()
        prepare = getattr(self.model, "prepare_decoder_input_ids_from_labels", None)
        if callable(prepare):
            # the models shift torch tensors: NumPy labels go through torch and back
            decoder_input_ids = prepare(labels=label_tensor)
            batch["decoder_input_ids"] = (decoder_input_ids if return_tensors == "pt"
                                          else decoder_input_ids.numpy())
        return batch
