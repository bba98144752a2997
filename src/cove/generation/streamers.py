"""Streamers: `generate` hands them the prompt once, then each new token, then calls `end()`.

`TextStreamer` prints text as soon as it is safe to: whole words (up to the last space), a
whole line, or right away when the pending text is only letters, marks, digits and spaces, or
ends in a CJK character. Nothing printed is ever taken back, and once `end()` has flushed the
rest, the printed pieces add up to the decoded text. `TextIteratorStreamer` yields the same
pieces from a queue, for `generate` running in another thread.
"""

from __future__ import annotations

import unicodedata
from queue import Queue
from typing import Any


class BaseStreamer:
    """What `generate` calls: `put(token_ids)` for the prompt and each new token, then `end()`."""

    def put(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _is_plain(text: str) -> bool:
    """Only spaces, letters, marks and digits: text that later tokens cannot rewrite."""
    return all(c.isspace() or unicodedata.category(c)[0] in "LMN" for c in text)


class TextStreamer(BaseStreamer):
    """Prints the decoded text to stdout as it is generated (batch size 1).

    skip_prompt: leave out the prompt; decode_kwargs go to `tokenizer.decode` (e.g.
    skip_special_tokens=True).
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def _decode(self, ids: Any) -> str:
        return self.tokenizer.decode(ids, **self.decode_kwargs)

    def put(self, value: Any) -> None:
        if hasattr(value, "shape") and len(value.shape) > 1:
            if value.shape[0] > 1:
                raise ValueError("TextStreamer only supports batch size 1")
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.next_tokens_are_prompt = False
        ids = value.tolist() if hasattr(value, "tolist") else value
        self.token_cache.extend([ids] if isinstance(ids, int) else ids)
        text = self._decode(self.token_cache)
        pending = text[self.print_len:]
        if text.endswith("\n"):
            # A finished line: print it, and keep only the last token as context.
            printable = pending
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self._decode(self.token_cache[-1]))
        elif text and _is_cjk(text[-1]):
            printable = pending
            self.print_len += len(printable)
        elif _is_plain(pending):
            printable = pending
            self.print_len += len(printable)
        else:
            # Up to the last space: the word being written may still change.
            printable = text[self.print_len:text.rfind(" ") + 1]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        if self.token_cache:
            printable = self._decode(self.token_cache)[self.print_len:]
        else:
            printable = ""
        self.token_cache = []
        self.print_len = 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, flush=True, end="" if not stream_end else None)


class TextIteratorStreamer(TextStreamer):
    """Iterate over the text pieces while `generate` runs in another thread.

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer)).start()
        for piece in streamer:
            ...

    timeout: seconds to wait for each piece (None: wait forever), so a failed generation
    does not block the reader for ever.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None,
                 **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> TextIteratorStreamer:
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value == self.stop_signal:
            raise StopIteration()
        return value
