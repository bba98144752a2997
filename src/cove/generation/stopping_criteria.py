"""Stopping criteria: callables `(input_ids, scores) -> BoolTensor[batch]`, True where a row is done.

`StopStringCriteria` ends a row once its text contains a stop string that overlaps the last
token: the tokens that complete the string stay in the output, and a string that was already
complete one token earlier does not count again. Text is compared as the tokenizer writes it
(bytes for byte-level and byte-fallback vocabularies, so a stop string may end in the middle of
a token or of a multi-byte character).
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch


class StoppingCriteria:
    """The base: subclasses implement `__call__(input_ids, scores)`."""

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")


class StoppingCriteriaList(list):
    """A row is done when any criterion says so."""

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self:
            done = done | criterion(input_ids, scores, **kwargs).to(done.device)
        return done

    @property
    def max_length(self) -> int | None:
        for criterion in self:
            if isinstance(criterion, MaxLengthCriteria):
                return criterion.max_length
        return None


class MaxLengthCriteria(StoppingCriteria):
    """Done when the sequence (prompt included) reaches `max_length` tokens."""

    def __init__(self, max_length: int, max_position_embeddings: int | None = None) -> None:
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = input_ids.shape[1] >= self.max_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class MaxTimeCriteria(StoppingCriteria):
    """Done when `max_time` seconds have passed since `initial_timestamp` (default: now)."""

    def __init__(self, max_time: float, initial_timestamp: float | None = None) -> None:
        self.max_time = max_time
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = time.time() - self.initial_timestamp > self.max_time
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class EosTokenCriteria(StoppingCriteria):
    """Done when the last token is one of `eos_token_id` (an int or a list)."""

    def __init__(self, eos_token_id: int | list[int] | torch.Tensor) -> None:
        if not isinstance(eos_token_id, torch.Tensor):
            eos_token_id = torch.tensor([eos_token_id] if isinstance(eos_token_id, int)
                                        else list(eos_token_id), dtype=torch.long)
        self.eos_token_id = eos_token_id.reshape(-1)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self.eos_token_id = self.eos_token_id.to(input_ids.device)
        return torch.isin(input_ids[:, -1], self.eos_token_id)


# -- stop strings ------------------------------------------------------------------------------

def byte_level_alphabet() -> dict[int, str]:
    """Byte-level BPE's printable stand-in for each byte (the GPT-2 table): bytes that are
    printable Latin-1 stand for themselves, the others take the code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF_CHAR = {char: byte for byte, char in byte_level_alphabet().items()}


def _decoder_types(config: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(config, dict):
        if isinstance(config.get("type"), str):
            found.add(config["type"])
        for value in config.values():
            found |= _decoder_types(value)
    elif isinstance(config, list):
        for value in config:
            found |= _decoder_types(value)
    return found


def matching_mode(tokenizer: Any) -> str | None:
    """'byte_level', 'byte_fallback' or None (plain text), from the tokenizer's decoder."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return None
    if type(decoder).__name__ == "ByteLevel":
        return "byte_level"
    try:
        state = decoder.__getstate__()
        config = json.loads(state.decode() if isinstance(state, bytes) else state)
    except Exception:
        return None
    types = _decoder_types(config)
    if "ByteFallback" in types:
        return "byte_fallback"
    if "ByteLevel" in types:
        return "byte_level"
    return None


class StopStringCriteria(StoppingCriteria):
    """Done when the decoded text has one of `stop_strings` overlapping the last token.

    Needs the model's tokenizer to know what text each token id stands for. The check runs on
    the host, over the last few tokens of each row (at most one token per character of the
    longest stop string).
    """

    _PREFIX = "abcdef"

    def __init__(self, tokenizer: Any, stop_strings: str | list[str]) -> None:
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        stop_strings = tuple(stop_strings)
        if not stop_strings or any(not isinstance(s, str) or not s for s in stop_strings):
            raise ValueError(f"`stop_strings` must be non-empty strings, got {stop_strings!r}")
        self.stop_strings = stop_strings
        self.tokenizer = tokenizer
        self.mode = matching_mode(tokenizer)
        self.targets: tuple[str | bytes, ...] = tuple(
            s.encode("utf-8") if self.mode else s for s in stop_strings)
        self.window = max(len(t) for t in self.targets)
        self._pieces: dict[int, str | bytes] = {}
        self._prefix_tokens: list[str] | None = None

    # What one token contributes to the text.
    def piece(self, token_id: int) -> str | bytes:
        found = self._pieces.get(token_id)
        if found is None:
            found = self._pieces[token_id] = self._make_piece(token_id)
        return found

    def _make_piece(self, token_id: int) -> str | bytes:
        empty: str | bytes = b"" if self.mode else ""
        try:
            token = self.tokenizer.convert_ids_to_tokens(int(token_id))
        except Exception:
            token = None
        if token is None:
            return empty
        if self.mode == "byte_level" and all(c in _BYTE_OF_CHAR for c in token):
            return bytes(_BYTE_OF_CHAR[c] for c in token)
        if (self.mode == "byte_fallback" and len(token) == 6 and token.startswith("<0x")
                and token.endswith(">")):
            try:
                return bytes([int(token[3:5], 16)])
            except ValueError:
                pass
        # Decode the token after a fixed prefix, so decoders that treat the first token
        # differently (e.g. SentencePiece's leading space) see it as they would mid-text.
        if self._prefix_tokens is None:
            ids = self.tokenizer(self._PREFIX, add_special_tokens=False)["input_ids"]
            self._prefix_tokens = list(self.tokenizer.convert_ids_to_tokens(list(ids)))
        text = self.tokenizer.convert_tokens_to_string(self._prefix_tokens + [token])
        cut = text.find(self._PREFIX)
        text = text[cut + len(self._PREFIX):] if cut >= 0 else \
            self.tokenizer.convert_tokens_to_string([token])
        return text.encode("utf-8") if self.mode else text

    def match_row(self, token_ids: list[int]) -> bool:
        """Whether these ids (a row's last tokens) end a stop string in their last token."""
        tail = token_ids[-self.window:]
        if not tail:
            return False
        pieces = [self.piece(t) for t in tail]
        text = pieces[0][:0].join(pieces)
        last_start = len(text) - len(pieces[-1])
        for target in self.targets:
            # An occurrence counts if it ends inside the last token's text.
            if text.find(target, max(0, last_start - len(target) + 1)) != -1:
                return True
        return False

    def match_rows(self, rows: list[list[int]]) -> list[bool]:
        return [self.match_row(row) for row in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        rows = input_ids[:, -self.window:].tolist()
        return torch.tensor(self.match_rows(rows), dtype=torch.bool, device=input_ids.device)
