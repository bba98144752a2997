"""Model outputs that read like transformers': attributes, keys, and tuple-style indexing."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class ModelOutput(OrderedDict):
    """A dict of the fields that are set (not None), also indexable by position."""

    def __init__(self, **fields: Any) -> None:
        super().__init__((k, v) for k, v in fields.items() if v is not None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


# Named like transformers' classes, so isinstance-free user code and reprs look familiar.
class BaseModelOutput(ModelOutput):
    pass


class BaseModelOutputWithPooling(ModelOutput):
    pass


class MaskedLMOutput(ModelOutput):
    pass


class SequenceClassifierOutput(ModelOutput):
    pass


class TokenClassifierOutput(ModelOutput):
    pass


class QuestionAnsweringModelOutput(ModelOutput):
    pass


class _WithCache(ModelOutput):
    @property
    def cache(self):
        """transformers 5.x's name for past_key_values."""
        return self.get("past_key_values")


class BaseModelOutputWithPast(_WithCache):
    pass


class CausalLMOutputWithPast(_WithCache):
    """loss, logits, past_key_values (a KVCache), hidden_states, attentions."""


class SequenceClassifierOutputWithPast(_WithCache):
    pass
