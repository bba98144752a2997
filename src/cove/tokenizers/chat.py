"""Chat templates: Jinja rendered in an immutable sandbox, with transformers' helpers.

Templates come from model repositories, so they are untrusted code: they run in
`jinja2.sandbox.ImmutableSandboxedEnvironment`, and everything they can see (messages, tools,
documents, extra variables) is first rebuilt from plain JSON-like values. The environment has
what chat templates written for transformers expect: `trim_blocks` and `lstrip_blocks`, the
`loopcontrols` extension, a `tojson` filter that does not escape HTML, `raise_exception`,
`strftime_now`, `dict` and `namespace`, and the `{% generation %}` block that marks assistant
text for `return_assistant_tokens_mask`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Names a message's reasoning may come under; templates read the first one.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class _GenerationTracker(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: records where the assistant's text lies."""

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        self._tracking: ContextVar = ContextVar("cove_generation_tracker", default=None)
        environment.extend(activate_tracker=self.activate_tracker)

    def parse(self, parser: Any) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_generation_support")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _generation_support(self, context: Any, caller: Any) -> str:
        text = caller()
        tracking = self._tracking.get()
        if tracking is not None:
            blocks, spans = tracking
            start = len("".join(blocks))
            spans.append((start, start + len(text)))
        return text

    @contextmanager
    def activate_tracker(self, blocks: list[str], spans: list[tuple[int, int]]):
        token = self._tracking.set((blocks, spans))
        try:
            yield
        finally:
            self._tracking.reset(token)


class _TemplateDict:
    """`dict(...)` inside templates, without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore-prefixed attribute names."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's own signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot set underscore-prefixed attributes on a namespace ({name!r})")


def raise_exception(message: str) -> None:
    """Lets a template stop with an error message (e.g. roles that must alternate)."""
    raise jinja2.exceptions.TemplateError(message)


def strftime_now(fmt: str) -> str:
    """The current local date and time, formatted (templates that print today's date)."""
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template in the sandbox (cached by source text)."""
    version = tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3])
    if version < (3, 1, 6):
        # Older releases have known sandbox escapes, and templates from repositories are untrusted.
        raise ImportError(f"Chat templates need jinja2>=3.1.6 (found {jinja2.__version__}): "
                          "pip install -U jinja2")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(source)


# --- what templates may see ------------------------------------------------------------------

def _as_dicts(value: Any) -> Any:
    """Message objects (dataclasses, pydantic models) as dicts, recursively."""
    if isinstance(value, Mapping):
        return {k: _as_dicts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_dicts(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_as_dicts(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _as_dicts(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _as_dicts(value.model_dump())
    return value


def plain(value: Any) -> Any:
    """Rebuild `value` from JSON-like types only; anything else becomes "<TypeName>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    item = getattr(value, "item", None)
    if type(value).__module__ == "numpy" and callable(item):
        return plain(item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain(value.model_dump())
    return f"<{type(value).__name__}>"


def normalize_messages(conversation: Any) -> list[dict]:
    """A conversation as a list of dicts, without the keys whose value is None."""
    messages = _as_dicts(getattr(conversation, "messages", conversation))
    out = []
    for message in messages:
        if not isinstance(message, dict):
            raise TypeError(f"Chat messages should be dicts, dataclasses or pydantic models, "
                            f"but got {message!r}.")
        out.append({k: v for k, v in message.items() if v is not None})
    return out


def _alias_reasoning(chat: list) -> list:
    out = []
    for message in chat:
        if isinstance(message, dict):
            reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None),
                             None)
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _tool_schema(tool: Any) -> dict:
    if isinstance(tool, dict):
        return tool
    if inspect.isfunction(tool) or inspect.ismethod(tool):
        return function_schema(tool)
    raise ValueError("Tools should either be a JSON schema, or a callable function with type "
                     "hints and a docstring suitable for auto-conversion to a schema.")


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object",
               list: "array", type(None): "null"}


def _type_schema(hint: Any) -> dict:
    import typing

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        kinds = [_type_schema(a) for a in args]
        types = [k["type"] for k in kinds if "type" in k]
        flat = []
        for t in types:
            flat.extend(t if isinstance(t, list) else [t])
        return {"type": flat[0] if len(flat) == 1 else flat}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    if origin is typing.Literal:
        return {"type": _JSON_TYPES.get(type(args[0]), "string"), "enum": list(args)}
    return {"type": "object"}


def function_schema(func: Any) -> dict:
    """A tool's JSON schema from its signature, type hints and Google-style docstring."""
    import typing

    doc = inspect.getdoc(func) or ""
    hints = typing.get_type_hints(func)
    description, _, rest = doc.partition("\nArgs:")
    arg_docs: dict[str, str] = {}
    if rest:
        body = re.split(r"\n\s*(Returns|Raises):", rest)[0]
        for match in re.finditer(r"^\s*(\w+)(?:\s*\([^)]*\))?:\s*(.*?)(?=^\s*\w+(?:\s*\([^)]*\))?:|\Z)",
                                 body, re.M | re.S):
            arg_docs[match.group(1)] = " ".join(match.group(2).split())
    properties: dict[str, dict] = {}
    required = []
    for name, param in inspect.signature(func).parameters.items():
        if name not in hints:
            raise ValueError(f"Argument {name} of {func.__name__} has no type hint")
        schema = _type_schema(hints[name])
        if name in arg_docs:
            schema["description"] = arg_docs[name]
        properties[name] = schema
        if param.default is inspect.Parameter.empty:
            required.append(name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    schema = {"name": func.__name__, "description": description.strip(), "parameters": parameters}
    if "return" in hints and hints["return"] is not None:
        schema["return"] = _type_schema(hints["return"])
    return {"type": "function", "function": schema}


def render(conversations: list[list[dict]], chat_template: str, *, tools: Any = None,
           documents: Any = None, add_generation_prompt: bool = False,
           continue_final_message: bool | str = False, return_assistant_tokens_mask: bool = False,
           **kwargs: Any) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Render each conversation; also return the `{% generation %}` spans of each."""
    template = compile_template(chat_template)
    tool_schemas = plain([_tool_schema(t) for t in tools]) if tools is not None else None
    if documents is not None:
        for document in documents:
            if not isinstance(document, dict):
                raise TypeError("Documents should be a list of dicts with 'title' and 'text' keys!")
    documents = plain(documents)
    kwargs = plain(kwargs)
    rendered: list[str] = []
    all_spans: list[list[tuple[int, int]]] = []
    for chat in conversations:
        chat = _alias_reasoning(plain(chat))
        final_message = None
        if continue_final_message:
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            if not chat or chat[-1].get(field) is None:
                raise ValueError(f'continue_final_message is set but the final message has no '
                                 f'"{field}" to continue!')
            fields = [field]
            final_message = chat[-1][field]
            if field in _REASONING_FIELDS:
                fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final_message]
            if not any(f in chat_template for f in fields):
                raise ValueError(f'continue_final_message is set to "{field}" but this is not an '
                                 "accepted field in the chat_template")
            if isinstance(final_message, (list, tuple)):
                for block in reversed(final_message):
                    if "text" in block:
                        final_message = block["text"]
                        block["text"] = block["text"] + _CONTINUE_TAG
                        break
                else:
                    raise ValueError("continue_final_message is set but we could not find any "
                                     "text to continue in the final message!")
            else:
                for f in fields:
                    chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
        variables = dict(messages=chat, tools=tool_schemas, documents=documents,
                         add_generation_prompt=add_generation_prompt, **kwargs)
        spans: list[tuple[int, int]] = []
        if return_assistant_tokens_mask:
            blocks: list[str] = []
            with template.environment.activate_tracker(blocks, spans):
                for block in template.generate(**variables):
                    blocks.append(block)
            text = "".join(blocks)
        else:
            text = template.render(**variables)
        if continue_final_message:
            if (final_message.strip() not in text) or (_CONTINUE_TAG.strip() not in text):
                raise ValueError(
                    "continue_final_message is set but the final message does not appear in the "
                    "chat after applying the chat template! This can happen if the chat template "
                    "deletes portions of the final message. Please verify the chat template and "
                    f"final message in your chat to ensure they are compatible.Final message to "
                    f"continue: {final_message.strip()}\nRendered chat:\n{text}")
            at = text.rindex(_CONTINUE_TAG.strip())
            if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
                text = text[:at]
            else:
                text = text[:at].rstrip()
        rendered.append(text)
        all_spans.append(spans)
    return rendered, all_spans
