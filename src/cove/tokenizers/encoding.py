"""BatchEncoding: what a tokenizer call returns (transformers' names and behaviour).

A dict of model inputs (input_ids, attention_mask, ...) with attribute access, tensor conversion
and, from the `tokenizers` encodings kept alongside, the maps between characters, words and
tokens (`word_ids`, `sequence_ids`, `char_to_token`, ...).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class CharSpan(NamedTuple):
    """A span of characters in the original string: `start` included, `end` excluded."""

    start: int
    end: int


class TokenSpan(NamedTuple):
    """A span of tokens in the encoded sequence: `start` included, `end` excluded."""

    start: int
    end: int


def _is_empty(value: Any) -> bool:
    """An empty list, or a list of empty lists (at any depth)."""
    if isinstance(value, (list, tuple)):
        return all(_is_empty(v) for v in value)
    return False


def _is_torch_tensor(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the libraries
        return False
    return isinstance(value, torch.Tensor)


def to_py_obj(obj: Any) -> Any:
    """Tensors, arrays and numpy scalars (also nested in lists and dicts) as Python objects."""
    if isinstance(obj, dict) or hasattr(obj, "items") and not isinstance(obj, (str, bytes)):
        return {k: to_py_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_py_obj(o) for o in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if _is_torch_tensor(obj):
        return obj.detach().cpu().tolist()
    return obj


def _tensor_type(tensor_type: Any) -> str | None:
    if tensor_type is None:
        return None
    name = getattr(tensor_type, "value", tensor_type)
    if name not in ("pt", "np"):
        raise ValueError(f"return_tensors={tensor_type!r} is not supported: use 'pt' (PyTorch), "
                         "'np' (NumPy) or None (Python lists).")
    return name


class BatchEncoding(dict):
    """The output of a tokenizer call: a dict of model inputs with attribute access.

    `data` holds lists (or tensors with `tensor_type` "pt"/"np"); `encoding` the `tokenizers`
    encodings behind them, which answer `tokens()`, `word_ids()`, `sequence_ids()`,
    `char_to_token()` and the other alignment methods.
    """

    def __init__(self, data: dict[str, Any] | None = None, encoding: Any = None,
                 tensor_type: Any = None, prepend_batch_axis: bool = False,
                 n_sequences: int | None = None) -> None:
        super().__init__(data or {})
        if encoding is not None and not isinstance(encoding, (list, tuple)):
            encoding = [encoding]
        self._encodings = list(encoding) if encoding is not None else None
        if n_sequences is None and self._encodings:
            n_sequences = self._encodings[0].n_sequences
        self._n_sequences = n_sequences
        self.convert_to_tensors(tensor_type=tensor_type, prepend_batch_axis=prepend_batch_axis)

    # --- dict behaviour -------------------------------------------------------------------

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, str):
            return dict.__getitem__(self, item)
        if self._encodings is not None:
            return self._encodings[item]
        if isinstance(item, slice):
            return {key: value[item] for key, value in self.items()}
        raise KeyError("Invalid key. Only three types of key are available: (1) string, "
                       "(2) integers for backend Encoding, and (3) slices for data subsetting.")

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__") or item in ("_encodings", "_n_sequences"):
            raise AttributeError(item)
        try:
            return dict.__getitem__(self, item)
        except KeyError:
            raise AttributeError(item) from None

    @property
    def data(self) -> BatchEncoding:
        """The dict of model inputs itself (transformers' UserDict-based class has `.data`)."""
        return self

    def __getstate__(self) -> dict:
        return {"data": dict(self), "encodings": self._encodings,
                "n_sequences": self._n_sequences}

    def __setstate__(self, state: dict) -> None:
        self.clear()
        self.update(state.get("data", {}))
        self._encodings = state.get("encodings")
        self._n_sequences = state.get("n_sequences")

    def __reduce__(self):
        return (self.__class__, (), self.__getstate__())

    def copy(self) -> BatchEncoding:
        return BatchEncoding(dict(self), self._encodings, n_sequences=self._n_sequences)

    # --- alignment (from the tokenizers encodings) ----------------------------------------

    @property
    def n_sequences(self) -> int | None:
        """1 for single sequences, 2 for pairs, None when unknown."""
        return self._n_sequences

    @property
    def is_fast(self) -> bool:
        return self._encodings is not None

    @property
    def encodings(self) -> list | None:
        """The `tokenizers.Encoding` of each row, or None (e.g. after `pad()`)."""
        return self._encodings

    def _need_encodings(self, what: str) -> None:
        if not self._encodings:
            raise ValueError(f"{what}() is not available when using non-fast tokenizers (e.g. "
                             "after pad() or on a hand-built BatchEncoding): it needs the "
                             "tokenizers encodings of a tokenizer call.")

    def _locate(self, what: str, batch_or_index: int, index: int | None,
                wrap: bool = False) -> tuple[Any, int]:
        """(the row's encoding, the index) for the `f(i)` / `f(batch, i)` call forms.

        With `wrap`, negative indices count from the end, as transformers does for the
        token_to_* and word_to_tokens methods."""
        self._need_encodings(what)
        batch, index = (0, batch_or_index) if index is None else (batch_or_index, index)
        if wrap and batch < 0:
            batch += len(self._encodings)
        encoding = self._encodings[batch]
        if wrap and index < 0:
            index += len(encoding.ids)
        return encoding, index

    def tokens(self, batch_index: int = 0) -> list[str]:
        """The token strings of row `batch_index`."""
        self._need_encodings("tokens")
        return self._encodings[batch_index].tokens

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """For each token: 0 (first sequence), 1 (second sequence) or None (special token)."""
        self._need_encodings("sequence_ids")
        return self._encodings[batch_index].sequence_ids

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """For each token: the index of the word it comes from, or None for special tokens."""
        self._need_encodings("word_ids")
        return self._encodings[batch_index].word_ids

    def words(self, batch_index: int = 0) -> list[int | None]:
        """Alias of `word_ids` (an older transformers name)."""
        return self.word_ids(batch_index)

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int:
        encoding, token_index = self._locate("token_to_sequence", batch_or_token_index,
                                             token_index, wrap=True)
        return encoding.token_to_sequence(token_index)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int:
        encoding, token_index = self._locate("token_to_word", batch_or_token_index,
                                             token_index, wrap=True)
        return encoding.token_to_word(token_index)

    def word_to_tokens(self, batch_or_word_index: int, word_index: int | None = None,
                       sequence_index: int = 0) -> TokenSpan | None:
        encoding, word_index = self._locate("word_to_tokens", batch_or_word_index, word_index,
                                            wrap=True)
        span = encoding.word_to_tokens(word_index, sequence_index)
        return TokenSpan(*span) if span is not None else None

    def token_to_chars(self, batch_or_token_index: int,
                       token_index: int | None = None) -> CharSpan | None:
        encoding, token_index = self._locate("token_to_chars", batch_or_token_index, token_index)
        span = encoding.token_to_chars(token_index)
        return CharSpan(*span) if span is not None else None

    def char_to_token(self, batch_or_char_index: int, char_index: int | None = None,
                      sequence_index: int = 0) -> int | None:
        """The index of the token holding character `char_index` (None for a space)."""
        encoding, char_index = self._locate("char_to_token", batch_or_char_index, char_index)
        return encoding.char_to_token(char_index, sequence_index)

    def word_to_chars(self, batch_or_word_index: int, word_index: int | None = None,
                      sequence_index: int = 0) -> CharSpan | None:
        encoding, word_index = self._locate("word_to_chars", batch_or_word_index, word_index)
        span = encoding.word_to_chars(word_index, sequence_index)
        return CharSpan(*span) if span is not None else None

    def char_to_word(self, batch_or_char_index: int, char_index: int | None = None,
                     sequence_index: int = 0) -> int | None:
        encoding, char_index = self._locate("char_to_word", batch_or_char_index, char_index)
        return encoding.char_to_word(char_index, sequence_index)

    # --- tensors --------------------------------------------------------------------------

    def convert_to_tensors(self, tensor_type: Any = None,
                           prepend_batch_axis: bool = False) -> BatchEncoding:
        """Turn every value into a torch tensor ("pt") or a NumPy array ("np"), in place."""
        kind = _tensor_type(tensor_type)
        if kind is None:
            return self
        if kind == "pt":
            import torch

            def as_tensor(value):
                if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
                    return torch.from_numpy(np.array(value))
                return torch.tensor(value, dtype=torch.int64 if _is_empty(value) else None)

            is_tensor = _is_torch_tensor
        else:
            def as_tensor(value):
                if (isinstance(value, (list, tuple)) and value
                        and isinstance(value[0], (list, tuple, np.ndarray))
                        and len({len(v) for v in value}) > 1):
                    ragged = np.empty(len(value), dtype=object)
                    ragged[:] = [np.asarray(v) for v in value]
                    return ragged
                return np.asarray(value, dtype=np.int64 if _is_empty(value) else None)

            def is_tensor(value):
                return isinstance(value, np.ndarray)

        for key, value in list(self.items()):
            try:
                if prepend_batch_axis:
                    value = [value]
                if not is_tensor(value):
                    self[key] = as_tensor(value)
            except Exception as e:
                raise ValueError(
                    "Unable to create tensor, you should probably activate truncation and/or "
                    "padding with 'padding=True' 'truncation=True' to have batched tensors with "
                    f"the same length. Perhaps your features (`{key}` in this case) have "
                    "excessive nesting (inputs type `list` where type `int` is expected).") from e
        return self

    def to(self, device: Any, *, non_blocking: bool = False) -> BatchEncoding:
        """Move every tensor to `device` (PyTorch); other values are kept as they are."""
        import torch

        if isinstance(device, (str, int, torch.device)):
            for key, value in list(self.items()):
                if hasattr(value, "to") and callable(value.to):
                    self[key] = value.to(device=device, non_blocking=non_blocking)
        return self
