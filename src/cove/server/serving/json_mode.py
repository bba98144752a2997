"""JSON mode: generation held to text that can still become one JSON object.

`JsonPrefix` is a pushdown automaton over characters (RFC 8259's grammar: objects, arrays,
strings with escapes, numbers, true/false/null) that says whether a text is the beginning of a
JSON object, and whether that object is complete. The engine offers it the model's candidate
tokens in its own order (greedy: best first; sampling: a draw without replacement, which is
rejection sampling), takes the first whose text keeps the output a valid prefix, and ends the
request once the object is complete. Runs of whitespace between tokens are capped, so a model
cannot pad forever instead of writing the object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

MAX_SPACES = 16  # whitespace characters in a row outside strings
_HEX = set("0123456789abcdefABCDEF")
_WHITESPACE = set(" \t\n\r")
# number states after which the number may end
_NUMBER_ENDS = {"zero", "int", "frac", "exp"}
_NUMBER = {  # state -> (character test, next state) pairs
    "sign": [(lambda c: c == "0", "zero"), (str.isdigit, "int")],
    "zero": [(lambda c: c == ".", "fracstart"), (lambda c: c in "eE", "expstart")],
    "int": [(str.isdigit, "int"), (lambda c: c == ".", "fracstart"),
            (lambda c: c in "eE", "expstart")],
    "fracstart": [(str.isdigit, "frac")],
    "frac": [(str.isdigit, "frac"), (lambda c: c in "eE", "expstart")],
    "expstart": [(lambda c: c in "+-", "expsign"), (str.isdigit, "exp")],
    "expsign": [(str.isdigit, "exp")],
    "exp": [(str.isdigit, "exp")],
}


class JsonPrefix:
    """Feed text; False once it can no longer begin a JSON object."""

    def __init__(self) -> None:
        self.stack: list[str] = []  # "o" object, "a" array
        # start, key_or_end, key, colon, value, value_or_end, after, string, number,
        # literal, done
        self.mode = "start"
        self.literal = ""  # the rest of true/false/null
        self.number = ""  # the number's state
        self.key = False  # the string is an object key
        self.escape = False
        self.hex_left = 0
        self.spaces = 0

    @property
    def complete(self) -> bool:
        return self.mode == "done"

    def feed(self, text: str) -> bool:
        return all(self._step(c) for c in text)

    def _step(self, c: str) -> bool:
        mode = self.mode
        if mode == "string":
            return self._string(c)
        if mode == "number":
            for test, state in _NUMBER[self.number]:
                if c.isascii() and test(c):
                    self.number = state
                    return True
            if self.number not in _NUMBER_ENDS:
                return False
            self.mode = "after"  # the number ended: c is what follows it
            return self._step(c)
        if mode == "literal":
            if c != self.literal[0]:
                return False
            self.literal = self.literal[1:]
            if not self.literal:
                self.mode = "after"
            return True
        if c in _WHITESPACE:
            self.spaces += 1
            return mode != "done" and self.spaces <= MAX_SPACES
        self.spaces = 0
        if mode == "start":
            return c == "{" and self._open("o")
        if mode in ("value", "value_or_end"):
            if mode == "value_or_end" and c == "]":
                return self._close()
            return self._value(c)
        if mode in ("key", "key_or_end"):
            if mode == "key_or_end" and c == "}":
                return self._close()
            if c == '"':
                self.mode, self.key = "string", True
                return True
            return False
        if mode == "colon":
            if c == ":":
                self.mode = "value"
                return True
            return False
        if mode == "after":
            top = self.stack[-1]
            if c == ",":
                self.mode = "key" if top == "o" else "value"
                return True
            return (c == "}" if top == "o" else c == "]") and self._close()
        return False  # done: nothing may follow

    def _string(self, c: str) -> bool:
        if self.hex_left:
            if c not in _HEX:
                return False
            self.hex_left -= 1
            return True
        if self.escape:
            self.escape = False
            if c == "u":
                self.hex_left = 4
                return True
            return c in '"\\/bfnrt'
        if c == "\\":
            self.escape = True
            return True
        if c == '"':
            self.mode = "colon" if self.key else "after"
            return True
        return c >= " "  # control characters must be escaped

    def _value(self, c: str) -> bool:
        if c == "{":
            return self._open("o")
        if c == "[":
            return self._open("a")
        if c == '"':
            self.mode, self.key = "string", False
            return True
        if c == "-" or c.isascii() and c.isdigit():
            self.mode = "number"
            self.number = "sign" if c == "-" else "zero" if c == "0" else "int"
            return True
        for word in ("true", "false", "null"):
            if c == word[0]:
                self.mode, self.literal = "literal", word[1:]
                return True
        return False

    def _open(self, kind: str) -> bool:
        self.stack.append(kind)
        self.mode = "key_or_end" if kind == "o" else "value_or_end"
        return True

    def _close(self) -> bool:
        self.stack.pop()
        self.mode = "after" if self.stack else "done"
        return True


def first_valid(candidates: Iterable[int], text_with: Callable[[int], str]
                ) -> tuple[int, JsonPrefix] | None:
    """The first candidate token whose text (`text_with(token)`: the whole output with it)
    still begins a JSON object, with the automaton after it; None if none does."""
    for token in candidates:
        state = JsonPrefix()
        text = text_with(token)
        if text and state.feed(text):
            return token, state
    return None
