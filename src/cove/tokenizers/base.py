"""PreTrainedTokenizerFast: transformers' fast-tokenizer API over a `tokenizers.Tokenizer`.

The Rust backend does the tokenizing, truncating, padding and decoding; this class holds what
transformers keeps around it (special tokens, model_max_length, padding side, chat templates),
turns the call arguments into backend settings, and shapes the outputs like transformers does.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import threading
from collections.abc import Mapping, Sized
from enum import Enum
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

from cove.tokenizers.encoding import BatchEncoding, _is_torch_tensor, to_py_obj

logger = logging.getLogger("cove.tokenizers")

VERY_LARGE_INTEGER = int(1e30)  # model_max_length when the model does not say
LARGE_INTEGER = int(1e20)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"

SPECIAL_TOKENS_ATTRIBUTES = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                             "cls_token", "mask_token"]


class PaddingStrategy(str, Enum):
    LONGEST = "longest"
    MAX_LENGTH = "max_length"
    DO_NOT_PAD = "do_not_pad"


class TruncationStrategy(str, Enum):
    ONLY_FIRST = "only_first"
    ONLY_SECOND = "only_second"
    LONGEST_FIRST = "longest_first"
    DO_NOT_TRUNCATE = "do_not_truncate"


def _strategy(enum: type[Enum], value: Any, what: str) -> Enum:
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum)
        raise ValueError(f"{value!r} is not a valid {what}, please select one of {choices}, "
                         "True or False") from None


def as_added_token(value: Any) -> Any:
    """AddedToken from its saved dict form ({"content": ..., "__type": "AddedToken"})."""
    if isinstance(value, dict) and "content" in value:
        state = {k: v for k, v in value.items() if k != "__type"}
        return AddedToken(**state)
    return value


def _added_token_state(token: AddedToken) -> dict:
    return {"content": token.content, "single_word": token.single_word, "lstrip": token.lstrip,
            "rstrip": token.rstrip, "normalized": token.normalized, "special": token.special}


def _saved_value(value: Any) -> Any:
    """AddedTokens inside a config value in their saved form."""
    if isinstance(value, AddedToken):
        return {**_added_token_state(value), "__type": "AddedToken"}
    if isinstance(value, (list, tuple)):
        return [_saved_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _saved_value(v) for k, v in value.items()}
    return value


def _special_token_property(name: str) -> property:
    def get(self):
        value = self._special_tokens_map.get(name)
        return None if value is None else str(value)

    def set_(self, value):
        if value is not None and not isinstance(value, (str, AddedToken)):
            raise ValueError(f"Cannot set a non-string value as the {name}")
        self._special_tokens_map[name] = value

    return property(get, set_, doc=f"The {name.replace('_', ' ')} (a string), or None.")


def _special_token_id_property(name: str) -> property:
    def get(self):
        value = self._special_tokens_map.get(name)
        return None if value is None else self.convert_tokens_to_ids(str(value))

    def set_(self, value):
        self._special_tokens_map[name] = (None if value is None
                                          else self.convert_ids_to_tokens(value))

    return property(get, set_, doc=f"The id of the {name.replace('_', ' ')}, or None.")


class TokenizersBackend:
    """A tokenizer with transformers' fast-tokenizer API, backed by `tokenizers`.

    Build it from a `tokenizers.Tokenizer` (`tokenizer_object=`) or a `tokenizer.json`
    (`tokenizer_file=`), or load one with `from_pretrained` (a folder or a Hub repository).
    Keyword arguments are those of `tokenizer_config.json`: special tokens (`bos_token`,
    `pad_token`, ..., `extra_special_tokens`), `model_max_length`, `padding_side`,
    `truncation_side`, `model_input_names`, `clean_up_tokenization_spaces`, `chat_template`,
    `add_bos_token`/`add_eos_token`, `added_tokens_decoder`.
    """

    vocab_files_names: dict[str, str] = {"tokenizer_file": TOKENIZER_FILE}
    # Keys of vocab_files_names that a model may lack (e.g. Marian's target_vocab.json).
    optional_vocab_files: frozenset[str] = frozenset()
    model_input_names: list[str] = ["input_ids", "attention_mask"]
    padding_side: str = "right"
    truncation_side: str = "right"
    # The class's own special tokens, used when the configuration does not name them.
    default_special_tokens: dict[str, str | None] = {}
    # The name written to tokenizer_config.json's "tokenizer_class".
    saved_class_name = "PreTrainedTokenizerFast"
    SPECIAL_TOKENS_ATTRIBUTES = SPECIAL_TOKENS_ATTRIBUTES

    bos_token = _special_token_property("bos_token")
    eos_token = _special_token_property("eos_token")
    unk_token = _special_token_property("unk_token")
    sep_token = _special_token_property("sep_token")
    pad_token = _special_token_property("pad_token")
    cls_token = _special_token_property("cls_token")
    mask_token = _special_token_property("mask_token")
    bos_token_id = _special_token_id_property("bos_token")
    eos_token_id = _special_token_id_property("eos_token")
    unk_token_id = _special_token_id_property("unk_token")
    sep_token_id = _special_token_id_property("sep_token")
    pad_token_id = _special_token_id_property("pad_token")
    cls_token_id = _special_token_id_property("cls_token")
    mask_token_id = _special_token_id_property("mask_token")

    def __init__(self, *args: Any, tokenizer_object: Tokenizer | None = None,
                 tokenizer_file: str | os.PathLike | None = None, **kwargs: Any) -> None:
        if args:
            raise TypeError(f"{type(self).__name__} takes keyword arguments only "
                            f"(got {len(args)} positional)")
        for key, value in self.default_special_tokens.items():
            kwargs.setdefault(key, value)
        built = False
        if tokenizer_object is not None:
            backend = Tokenizer.from_str(tokenizer_object.to_str())  # a copy, like transformers
        elif tokenizer_file is not None and os.path.isfile(tokenizer_file):
            backend = self._rebuild_from_json(str(tokenizer_file), kwargs)
            built = backend is not None
            if backend is None:
                backend = Tokenizer.from_file(str(tokenizer_file))
        else:
            backend = self._build_backend(kwargs)
            built = True
        if backend is None:
            raise ValueError(
                f"Couldn't instantiate {type(self).__name__}: give a `tokenizers` serialization "
                "(tokenizer_file= a tokenizer.json, or tokenizer_object=), or the vocabulary "
                "files its class builds from (vocab.txt, vocab.json + merges.txt, or a "
                "SentencePiece .model).")
        self._lock = threading.RLock()
        self._setup(backend, kwargs, built)

    # --- construction -----------------------------------------------------------------------

    def _build_backend(self, kwargs: dict[str, Any]) -> Tokenizer | None:
        """Build the backend from vocabulary files (the named classes build their own; this
        generic class reads a SentencePiece .model the way SentencePiece runs it)."""
        path = kwargs.get("vocab_file")
        if path is None or not str(path).endswith(".model"):
            return None
        from cove.tokenizers import builders

        proto = builders.load_spm(path)
        spec = proto.trainer_spec
        for key, index, piece in (("bos_token", spec.bos_id, spec.bos_piece or "<s>"),
                                  ("eos_token", spec.eos_id, spec.eos_piece or "</s>"),
                                  ("unk_token", spec.unk_id, spec.unk_piece or "<unk>")):
            if index >= 0:
                kwargs.setdefault(key, piece)
        if kwargs.get("extra_special_tokens") is None and "additional_special_tokens" in kwargs:
            kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
        if kwargs.get("extra_special_tokens") is None:
            kwargs["extra_special_tokens"] = [
                AddedToken(piece, normalized=False, special=True)
                for _, piece, special in builders.spm_special_pieces(proto) if special]
        if proto.normalizer_spec.add_dummy_prefix and kwargs.get("added_tokens_decoder"):
            # added tokens match the raw text, so each chunk between them gets its own prefix
            kwargs["added_tokens_decoder"] = {
                i: AddedToken(**{**_added_token_state(t), "normalized": False})
                if isinstance(t, AddedToken) else t
                for i, t in kwargs["added_tokens_decoder"].items()}
        return builders.spm_faithful(proto, legacy=kwargs.get("legacy", True))

    # The tokenizers model a named class builds ("WordPiece", "BPE", "Unigram"); None for the
    # generic class, which loads a tokenizer.json as it is.
    backend_model: str | None = None

    def _make_backend(self, kwargs: dict[str, Any], vocab: Any, merges: Any,
                      charsmap: bytes | None) -> Tokenizer | None:
        """The class's pipeline over vocabulary data taken from a tokenizer.json."""
        return None

    def _rebuild_from_json(self, path: str, kwargs: dict[str, Any]) -> Tokenizer | None:
        """A named class with a tokenizer.json, as transformers 5 loads it: the vocabulary
        (and merges) come from the file, the normalizer, pre-tokenizer and decoder from the
        class and its configuration; the file's post-processor, truncation and padding stay.
        None (load the file as it is) for the generic class, or a model of another kind."""
        if self.backend_model is None:
            return None
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        model = data.get("model") or {}
        kind = model.get("type")
        if kind is None:  # older files do not say
            kind = ("BPE" if "merges" in model else
                    "Unigram" if isinstance(model.get("vocab"), list) else "WordPiece")
        if kind != self.backend_model:
            return None
        vocab = model.get("vocab")
        merges = None
        if kind == "Unigram":
            vocab = [tuple(item) for item in vocab]
            settings = Tokenizer.from_str(json.dumps(data))
        else:
            if isinstance(vocab, list):
                vocab = {(t[0] if isinstance(t, list) else t): i for i, t in enumerate(vocab)}
            if kind == "BPE":
                merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                          for m in model.get("merges") or []]
            # the settings alone, without parsing the vocabulary twice
            empty = {**model, "vocab": {}, **({"merges": []} if kind == "BPE" else {})}
            settings = Tokenizer.from_str(json.dumps({**data, "model": empty,
                                                      "added_tokens": []}))
        charsmap = None
        normalizer = data.get("normalizer") or {}
        steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" \
            else [normalizer]
        for step in steps:
            if (step or {}).get("type") == "Precompiled" and "precompiled_charsmap" in step:
                import base64

                charsmap = base64.b64decode(step["precompiled_charsmap"])
                break
        backend = self._make_backend(kwargs, vocab, merges, charsmap)
        if backend is None:
            return None
        backend.post_processor = settings.post_processor
        if settings.truncation is not None:
            backend.enable_truncation(**{k: settings.truncation[k] for k in (
                "max_length", "stride", "strategy", "direction")})
        if settings.padding is not None:
            padding = settings.padding
            backend.enable_padding(direction=padding["direction"], pad_id=padding["pad_id"],
                                   pad_type_id=padding["pad_type_id"],
                                   pad_token=padding["pad_token"], length=padding.get("length"),
                                   pad_to_multiple_of=padding.get("pad_to_multiple_of"))
        return backend

    def _class_post_processor(self) -> Any:
        """The post-processor a class sets once its special tokens are known (or None)."""
        return None

    def _setup(self, backend: Tokenizer, kwargs: dict[str, Any], built: bool) -> None:
        self._tokenizer = backend
        self._json_truncation = backend.truncation
        self._json_padding = backend.padding
        if self._json_truncation is not None:
            kwargs.setdefault("truncation_side", self._json_truncation["direction"])
        if self._json_padding is not None:
            kwargs.setdefault("pad_token", self._json_padding["pad_token"])
            kwargs.setdefault("padding_side", self._json_padding["direction"])

        explicit_bos_eos = "add_bos_token" in kwargs or "add_eos_token" in kwargs
        self._add_bos_token = bool(kwargs.get("add_bos_token", False))
        self._add_eos_token = bool(kwargs.get("add_eos_token", False))
        added_tokens_decoder = {int(i): as_added_token(t) for i, t in
                                (kwargs.get("added_tokens_decoder") or {}).items()}
        self._init_common(kwargs)
        self._tokenizer.encode_special_tokens = self.split_special_tokens
        self._register_added_tokens(added_tokens_decoder)
        if explicit_bos_eos or self._tokenizer.post_processor is None:
            self.update_post_processor()
        if built:
            processor = self._class_post_processor()
            if processor is not None:
                self._tokenizer.post_processor = processor

    def _init_common(self, kwargs: dict[str, Any]) -> None:
        """The tokenizer-level settings (transformers' PreTrainedTokenizerBase.__init__)."""
        if "additional_special_tokens" in kwargs and "extra_special_tokens" not in kwargs:
            kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
        self.init_inputs = ()
        self.init_kwargs = copy.deepcopy(kwargs)
        self.name_or_path = kwargs.pop("name_or_path", "")
        self.verbose = kwargs.pop("verbose", False)
        self._special_tokens_map: dict[str, Any] = dict.fromkeys(SPECIAL_TOKENS_ATTRIBUTES)
        self._extra_special_tokens: list[Any] = []
        self._model_specific_names: list[str] = []
        explicit = kwargs.pop("model_specific_special_tokens", None) or {}
        if not isinstance(explicit, dict):
            raise TypeError("model_specific_special_tokens must be a dictionary of token name "
                            "to token value")
        auto: dict[str, Any] = {}
        for key in list(kwargs):
            if key in SPECIAL_TOKENS_ATTRIBUTES:
                value = kwargs.pop(key)
                if value is None:
                    continue
                if not isinstance(value, (str, AddedToken)):
                    value = as_added_token(value)
                if not isinstance(value, (str, AddedToken)):
                    raise TypeError(f"Special token {key} has to be either str or AddedToken "
                                    f"but got: {type(value)}")
                self._special_tokens_map[key] = value
            elif key == "extra_special_tokens":
                value = kwargs.pop(key)
                if value is None:
                    continue
                if isinstance(value, dict):
                    explicit = {**value, **explicit}
                elif isinstance(value, (list, tuple)):
                    self._extra_special_tokens = [as_added_token(v) for v in value]
                else:
                    raise TypeError("extra_special_tokens must be a list/tuple of tokens or a "
                                    "dict of named tokens")
            elif key.endswith("_token") and isinstance(kwargs[key], (str, AddedToken)):
                auto[key] = kwargs.pop(key)
        for key, value in {**auto, **explicit}.items():
            value = as_added_token(value)
            if not isinstance(value, (str, AddedToken)):
                raise TypeError(f"Special token {key} has to be either str or AddedToken but "
                                f"got: {type(value)}")
            if key not in self._model_specific_names:
                self._model_specific_names.append(key)
            self._special_tokens_map[key] = value

        model_max_length = kwargs.pop("model_max_length", kwargs.pop("max_len", None))
        self.model_max_length = (int(model_max_length) if model_max_length is not None
                                 else VERY_LARGE_INTEGER)
        self.padding_side = kwargs.pop("padding_side", type(self).padding_side)
        if self.padding_side not in ("right", "left"):
            raise ValueError("Padding side should be selected between 'right' and 'left', "
                             f"current value: {self.padding_side}")
        self.truncation_side = kwargs.pop("truncation_side", type(self).truncation_side)
        if self.truncation_side not in ("right", "left"):
            raise ValueError("Truncation side should be selected between 'right' and 'left', "
                             f"current value: {self.truncation_side}")
        self.model_input_names = list(kwargs.pop("model_input_names",
                                                 type(self).model_input_names))
        self.clean_up_tokenization_spaces = kwargs.pop("clean_up_tokenization_spaces", False)
        self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = kwargs.pop(
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        self.split_special_tokens = kwargs.pop("split_special_tokens", False)
        template = kwargs.pop("chat_template", None)
        if isinstance(template, (list, tuple)):
            template = {t["name"]: t["template"] for t in template}
        self.chat_template = template
        self.response_template = kwargs.pop("response_template", None)
        kwargs.pop("response_schema", None)
        self.chat_control_tokens = kwargs.pop("chat_control_tokens", None)
        self._pad_token_type_id = 0
        self._warned: set[str] = set()

    def _register_added_tokens(self, added_tokens_decoder: dict[int, AddedToken]) -> None:
        """Add the configuration's added tokens and the special tokens the backend lacks."""
        present = {repr(t) for t in self._tokenizer.get_added_tokens_decoder().values()}
        to_add: list[Any] = [t for _, t in sorted(added_tokens_decoder.items())
                             if repr(t) not in present]
        known = set(self.added_tokens_encoder) | {str(t) for t in to_add}
        # As transformers: a token named twice (say bos as a string, eos as an AddedToken) is
        # added twice, and the backend keeps the last one's flags.
        for value in [*self._special_tokens_map.values(), *self._extra_special_tokens]:
            if value is not None and str(value) not in known and value not in to_add:
                to_add.append(value)
        if not to_add:
            return
        named = {str(v) for v in self._special_tokens_map.values() if v}
        tokens = []
        for token in to_add:
            if isinstance(token, str):
                token = AddedToken(token, special=True)
            elif not token.special and str(token) in named:
                token.special = True
            tokens.append(token)
        self._tokenizer.add_tokens(tokens)

    # --- special tokens -------------------------------------------------------------------

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)  # pickling (multiprocessing, datasets.map) and deepcopy
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__["_lock"] = threading.RLock()

    def __getattr__(self, key: str) -> Any:
        # Model-specific named special tokens (e.g. image_token), and their _id forms.
        if key.startswith("__") or key in ("_special_tokens_map", "_model_specific_names"):
            raise AttributeError(key)
        names = self.__dict__.get("_model_specific_names", ())
        base = key.removesuffix("_id")
        if base in names:
            value = self.__dict__["_special_tokens_map"].get(base)
            if value is None:
                return None
            return self.convert_tokens_to_ids(str(value)) if key != base else str(value)
        raise AttributeError(f"{type(self).__name__} has no attribute {key}")

    def __setattr__(self, key: str, value: Any) -> None:
        names = self.__dict__.get("_model_specific_names", ())
        base = key.removesuffix("_id")
        if base in names:
            if key != base and value is not None:
                value = self.convert_ids_to_tokens(value)
            self._special_tokens_map[base] = value
            return
        object.__setattr__(self, key, value)

    @property
    def extra_special_tokens(self) -> list[str]:
        """The special tokens beyond the named ones (transformers 5 name)."""
        return [str(t) for t in self._extra_special_tokens]

    @extra_special_tokens.setter
    def extra_special_tokens(self, value: list | None) -> None:
        if value is not None and not isinstance(value, (list, tuple)):
            raise ValueError(f"extra_special_tokens must be a list or tuple, got {type(value)}")
        self._extra_special_tokens = [] if value is None else list(value)

    @property
    def extra_special_tokens_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.extra_special_tokens)

    # transformers 4 names for the same list
    additional_special_tokens = extra_special_tokens
    additional_special_tokens_ids = extra_special_tokens_ids

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, as strings."""
        return {k: str(v) for k, v in self._special_tokens_map.items() if v is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """Every special token (named, then extra), as unique strings."""
        seen: list[str] = []
        for value in [*self._special_tokens_map.values(), *self._extra_special_tokens]:
            if value is not None and str(value) not in seen:
                seen.append(str(value))
        return seen

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def pad_token_type_id(self) -> int:
        return self._pad_token_type_id

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = value
        self.update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = value
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """Set the backend's post-processor from `add_bos_token` / `add_eos_token`."""
        from tokenizers import processors

        bos, eos = self.bos_token, self.eos_token
        if bos is None and self._add_bos_token:
            self._add_bos_token = False
        if eos is None and self._add_eos_token:
            self._add_eos_token = False
        single = (f"{bos}:0 " if self._add_bos_token else "") + "$A:0" + (
            f" {eos}:0" if self._add_eos_token else "")
        pair = single + (f" {bos}:1" if self._add_bos_token else "") + " $B:1" + (
            f" {eos}:1" if self._add_eos_token else "")
        special = []
        if self._add_bos_token:
            special.append((bos, self.bos_token_id))
        if self._add_eos_token:
            special.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=special)

    def add_special_tokens(self, special_tokens_dict: dict[str, Any],
                           replace_extra_special_tokens: bool = True) -> int:
        """Set named special tokens (and/or `extra_special_tokens`), adding any the
        vocabulary lacks; return how many tokens were added to the vocabulary."""
        if not special_tokens_dict:
            return 0
        special_tokens_dict = dict(special_tokens_dict)
        if ("additional_special_tokens" in special_tokens_dict
                and not special_tokens_dict.get("extra_special_tokens")):
            special_tokens_dict["extra_special_tokens"] = special_tokens_dict.pop(
                "additional_special_tokens")
        allowed = set(SPECIAL_TOKENS_ATTRIBUTES) | {"extra_special_tokens"}
        to_add: list[Any] = []
        for key, value in special_tokens_dict.items():
            if key not in allowed:
                raise ValueError(f"Key {key} is not a valid special token. Valid keys are: "
                                 f"{sorted(allowed)}")
            if key == "extra_special_tokens":
                if not isinstance(value, (list, tuple)) or not all(
                        isinstance(t, (str, AddedToken)) for t in value):
                    raise ValueError(f"Tokens {value} for key {key} should all be str or "
                                     "AddedToken instances")
                current = self.extra_special_tokens
                new = [AddedToken(t, rstrip=False, lstrip=False, normalized=False, special=True)
                       if isinstance(t, str) else t for t in value
                       if replace_extra_special_tokens or str(t) not in current]
                if replace_extra_special_tokens and new:
                    self._extra_special_tokens = list(new)
                else:
                    self._extra_special_tokens.extend(new)
                to_add.extend(new)
            else:
                if not isinstance(value, (str, AddedToken)):
                    raise ValueError(f"Token {value} for key {key} should be a str or an "
                                     "AddedToken instance")
                if isinstance(value, str):
                    value = AddedToken(value, rstrip=False, lstrip=False, normalized=False,
                                       special=True)
                self._special_tokens_map[key] = value
                to_add.append(value)
        return self.add_tokens(to_add, special_tokens=True)

    def add_tokens(self, new_tokens: str | AddedToken | list, special_tokens: bool = False) -> int:
        """Add tokens the vocabulary lacks (they are never split); return how many were new."""
        if not new_tokens:
            return 0
        if not isinstance(new_tokens, (list, tuple)):
            new_tokens = [new_tokens]
        if special_tokens:
            return self._tokenizer.add_special_tokens(list(new_tokens))
        return self._tokenizer.add_tokens(list(new_tokens))

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 for special tokens, 0 for the others, over ids that already hold them."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("You should not supply a second sequence if the provided "
                                 "sequence of ids is already formatted with special tokens "
                                 "for the model.")
            special = set(self.all_special_ids)
            return [1 if int(t) in special else 0 for t in token_ids_0]
        raise NotImplementedError(f"{type(self).__name__} does not implement "
                                  "get_special_tokens_mask for non-formatted sequences")

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tokenizer.num_special_tokens_to_add(pair)

    @property
    def max_len_single_sentence(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(pair=False)

    @property
    def max_len_sentences_pair(self) -> int:
        return self.model_max_length - self.num_special_tokens_to_add(pair=True)

    # --- vocabulary -------------------------------------------------------------------------

    @property
    def is_fast(self) -> bool:
        return True

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The `tokenizers.Tokenizer` doing the work."""
        return self._tokenizer

    @property
    def decoder(self) -> Any:
        return self._tokenizer.decoder

    @property
    def vocab_size(self) -> int:
        """The size of the base vocabulary (without added tokens)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """The size of the whole vocabulary (with added tokens)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __bool__(self) -> bool:
        return True

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab(self) -> dict[str, int]:
        return self.get_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self._tokenizer.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items())}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Token(s) to id(s); unknown tokens give the unk token's id (None without one)."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int | None:
        index = self._tokenizer.token_to_id(token)
        if index is None:
            unk = self._special_tokens_map.get("unk_token")
            return None if unk is None else self._tokenizer.token_to_id(str(unk))
        return index

    def convert_ids_to_tokens(self, ids: int | list[int],
                              skip_special_tokens: bool = False) -> str | None | list[str | None]:
        ids = to_py_obj(ids)
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False,
                 **kwargs: Any) -> list[str]:
        """The token strings of `text` (and `pair`)."""
        return self._encode_plus(text=text, text_pair=pair, add_special_tokens=add_special_tokens,
                                 **kwargs).tokens()

    # --- encoding ---------------------------------------------------------------------------

    def _get_padding_truncation_strategies(self, padding: Any = False, truncation: Any = None,
                                           max_length: int | None = None,
                                           pad_to_multiple_of: int | None = None,
                                           verbose: bool = True, **kwargs: Any):
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # max_length alone truncates, as in transformers
        if padding is not False:
            if padding is True:
                if verbose and max_length is not None and truncation in (
                        None, False, "do_not_truncate"):
                    self._warn_once("max_length-ignored",
                                    "`max_length` is ignored when `padding`=`True` and there is no "
                                    "truncation strategy. To pad to max length, use "
                                    "`padding='max_length'`.")
                padding_strategy = PaddingStrategy.LONGEST
            else:
                padding_strategy = _strategy(PaddingStrategy, padding, "PaddingStrategy")
        else:
            padding_strategy = PaddingStrategy.DO_NOT_PAD
        if truncation is not False and truncation is not None:
            truncation_strategy = (TruncationStrategy.LONGEST_FIRST if truncation is True else
                                   _strategy(TruncationStrategy, truncation, "TruncationStrategy"))
        else:
            truncation_strategy = TruncationStrategy.DO_NOT_TRUNCATE
        if max_length is None:
            if padding_strategy == PaddingStrategy.MAX_LENGTH:
                if self.model_max_length > LARGE_INTEGER:
                    padding_strategy = PaddingStrategy.DO_NOT_PAD
                else:
                    max_length = self.model_max_length
            if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE:
                if self.model_max_length > LARGE_INTEGER:
                    truncation_strategy = TruncationStrategy.DO_NOT_TRUNCATE
                else:
                    max_length = self.model_max_length
        if padding_strategy != PaddingStrategy.DO_NOT_PAD and (
                self.pad_token is None or self.pad_token_id is None or self.pad_token_id < 0):
            raise ValueError(
                "Asking to pad but the tokenizer does not have a padding token. Please select a "
                "token to use as `pad_token` `(tokenizer.pad_token = tokenizer.eos_token e.g.)` "
                "or add a new pad token via `tokenizer.add_special_tokens({'pad_token': "
                "'[PAD]'})`.")
        if (truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE
                and padding_strategy != PaddingStrategy.DO_NOT_PAD
                and pad_to_multiple_of is not None and max_length is not None
                and max_length % pad_to_multiple_of != 0):
            raise ValueError("Truncation and padding are both activated but truncation length "
                             f"({max_length}) is not a multiple of pad_to_multiple_of "
                             f"({pad_to_multiple_of}).")
        return padding_strategy, truncation_strategy, max_length, kwargs

    def __call__(self, text: Any = None, text_pair: Any = None, text_target: Any = None,
                 text_pair_target: Any = None, add_special_tokens: bool = True,
                 padding: bool | str = False, truncation: bool | str | None = None,
                 max_length: int | None = None, stride: int = 0,
                 is_split_into_words: bool = False, pad_to_multiple_of: int | None = None,
                 padding_side: str | None = None, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None,
                 return_attention_mask: bool | None = None,
                 return_overflowing_tokens: bool = False,
                 return_special_tokens_mask: bool = False,
                 return_offsets_mapping: bool = False, return_length: bool = False,
                 verbose: bool = True, tokenizer_kwargs: dict[str, Any] | None = None,
                 **kwargs: Any) -> BatchEncoding:
        """Tokenize text(s) or text pair(s) into model inputs (a BatchEncoding).

        `text` is a string, a list of strings (a batch), or with `is_split_into_words=True` a
        list of words (or a batch of such lists). `padding` True/"longest", "max_length" or
        False; `truncation` True/"longest_first", "only_first", "only_second" or False;
        `return_overflowing_tokens` with `stride` splits long inputs into several rows (and
        adds `overflow_to_sample_mapping`). `return_tensors` "pt", "np" or None (lists).
        """
        all_kwargs = {
            "add_special_tokens": add_special_tokens, "padding": padding,
            "truncation": truncation, "max_length": max_length, "stride": stride,
            "is_split_into_words": is_split_into_words, "pad_to_multiple_of": pad_to_multiple_of,
            "padding_side": padding_side, "return_tensors": return_tensors,
            "return_token_type_ids": return_token_type_ids,
            "return_attention_mask": return_attention_mask,
            "return_overflowing_tokens": return_overflowing_tokens,
            "return_special_tokens_mask": return_special_tokens_mask,
            "return_offsets_mapping": return_offsets_mapping, "return_length": return_length,
            "split_special_tokens": kwargs.pop("split_special_tokens", self.split_special_tokens),
            "verbose": verbose,
        }
        max_target_length = kwargs.pop("max_target_length", None)
        if tokenizer_kwargs is not None:
            all_kwargs.update(tokenizer_kwargs)
        all_kwargs.update(kwargs)
        if text is None and text_target is None:
            raise ValueError("You need to specify either `text` or `text_target`.")
        padding_strategy, truncation_strategy, max_length, _ = \
            self._get_padding_truncation_strategies(
                padding=all_kwargs.pop("padding", False),
                truncation=all_kwargs.pop("truncation", None),
                max_length=all_kwargs.pop("max_length", None),
                pad_to_multiple_of=all_kwargs.get("pad_to_multiple_of"),
                verbose=all_kwargs.get("verbose", True))
        encodings = targets = None
        if text is not None:
            encodings = self._encode_plus(text=text, text_pair=text_pair,
                                          padding_strategy=padding_strategy,
                                          truncation_strategy=truncation_strategy,
                                          max_length=max_length, **all_kwargs)
        if text_target is not None:
            with self._target_mode():
                targets = self._encode_plus(
                    text=text_target, text_pair=text_pair_target,
                    padding_strategy=padding_strategy, truncation_strategy=truncation_strategy,
                    max_length=max_target_length if max_target_length is not None else max_length,
                    **all_kwargs)
        if targets is None:
            return encodings
        if encodings is None:
            return targets
        encodings["labels"] = targets["input_ids"]
        return encodings

    def _target_mode(self) -> contextlib.AbstractContextManager:
        """The state in which `text_target` is encoded: the same as inputs, except for
        tokenizers with a target vocabulary of their own (Marian)."""
        return contextlib.nullcontext()

    def encode(self, text: Any, text_pair: Any = None, add_special_tokens: bool = True,
               padding: bool | str = False, truncation: bool | str | None = None,
               max_length: int | None = None, stride: int = 0, padding_side: str | None = None,
               return_tensors: str | None = None, **kwargs: Any) -> Any:
        """The input ids of `text` (and `text_pair`)."""
        padding_strategy, truncation_strategy, max_length, kwargs = \
            self._get_padding_truncation_strategies(padding=padding, truncation=truncation,
                                                    max_length=max_length, **kwargs)
        out = self._encode_plus(text, text_pair=text_pair, add_special_tokens=add_special_tokens,
                                padding_strategy=padding_strategy,
                                truncation_strategy=truncation_strategy, max_length=max_length,
                                stride=stride, padding_side=padding_side,
                                return_tensors=return_tensors, **kwargs)
        return out["input_ids"]

    def encode_plus(self, text: Any, text_pair: Any = None, **kwargs: Any) -> BatchEncoding:
        """transformers 4 name: the same as calling the tokenizer on one input."""
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(self, batch_text_or_text_pairs: list, **kwargs: Any) -> BatchEncoding:
        """transformers 4 name: call the tokenizer on a batch of texts or (text, pair) tuples."""
        batch = list(batch_text_or_text_pairs)
        if batch and isinstance(batch[0], tuple):
            return self([t for t, _ in batch], [p for _, p in batch], **kwargs)
        return self(batch, **kwargs)

    def _set_truncation_and_padding(self, padding_strategy: PaddingStrategy,
                                    truncation_strategy: TruncationStrategy,
                                    max_length: int | None, stride: int,
                                    pad_to_multiple_of: int | None,
                                    padding_side: str | None) -> None:
        current_truncation = self._tokenizer.truncation
        current_padding = self._tokenizer.padding
        if truncation_strategy == TruncationStrategy.DO_NOT_TRUNCATE:
            if current_truncation is not None:
                self._tokenizer.no_truncation()
        else:
            target = {"max_length": max_length, "stride": stride,
                      "strategy": truncation_strategy.value, "direction": self.truncation_side}
            current = (None if current_truncation is None
                       else {k: current_truncation.get(k) for k in target})
            if current != target:
                self._tokenizer.enable_truncation(**target)
        if padding_strategy == PaddingStrategy.DO_NOT_PAD:
            if current_padding is not None:
                self._tokenizer.no_padding()
        else:
            target = {
                "length": max_length if padding_strategy == PaddingStrategy.MAX_LENGTH else None,
                "direction": padding_side if padding_side is not None else self.padding_side,
                "pad_id": self.pad_token_id, "pad_token": self.pad_token,
                "pad_type_id": self.pad_token_type_id, "pad_to_multiple_of": pad_to_multiple_of,
            }
            if current_padding != target:
                self._tokenizer.enable_padding(**target)

    set_truncation_and_padding = _set_truncation_and_padding

    @staticmethod
    def _valid_text_input(t: Any) -> bool:
        if isinstance(t, str):
            return True
        if isinstance(t, (list, tuple)):
            if len(t) == 0 or isinstance(t[0], str):
                return True
            if isinstance(t[0], (list, tuple)):
                if len(t[0]) == 0 or isinstance(t[0][0], str):
                    return True
                if isinstance(t[0][0], (list, tuple)):
                    return len(t[0][0]) == 0 or isinstance(t[0][0][0], str)
        return False

    def _encode_plus(self, text: Any, text_pair: Any = None, add_special_tokens: bool = True,
                     padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
                     truncation_strategy: TruncationStrategy = TruncationStrategy.DO_NOT_TRUNCATE,
                     max_length: int | None = None, stride: int = 0,
                     is_split_into_words: bool = False, pad_to_multiple_of: int | None = None,
                     padding_side: str | None = None, return_tensors: str | None = None,
                     return_token_type_ids: bool | None = None,
                     return_attention_mask: bool | None = None,
                     return_overflowing_tokens: bool = False,
                     return_special_tokens_mask: bool = False,
                     return_offsets_mapping: bool = False, return_length: bool = False,
                     verbose: bool = True, split_special_tokens: bool | None = None,
                     **kwargs: Any) -> BatchEncoding:
        message = ("text input must be of type `str` (single example), `list[str]` (batch or "
                   "single pretokenized example) or `list[list[str]]` (batch of pretokenized "
                   "examples) or `list[tuple[list[str], list[str]]]` (batch of pretokenized "
                   "sequence pairs).")
        if not self._valid_text_input(text):
            raise ValueError(message)
        if text_pair is not None and not self._valid_text_input(text_pair):
            raise ValueError(message)
        if is_split_into_words:
            is_batched = bool(isinstance(text, (list, tuple)) and text
                              and isinstance(text[0], (list, tuple)))
        else:
            is_batched = isinstance(text, (list, tuple))
        if is_batched:
            if isinstance(text_pair, str):
                raise TypeError("when tokenizing batches of text, `text_pair` must be a list or "
                                "tuple with the same length as `text`.")
            if text_pair is not None and len(text) != len(text_pair):
                raise ValueError(f"batch length of `text`: {len(text)} does not match batch "
                                 f"length of `text_pair`: {len(text_pair)}.")
            batch = (list(zip(text, text_pair, strict=True)) if text_pair is not None
                     else list(text))
        else:
            batch = [(text, text_pair)] if text_pair else [text]
        if kwargs.get("sanitize_control_tokens"):
            raise NotImplementedError("sanitize_control_tokens is not supported by Cove yet")
        if split_special_tokens is None:
            split_special_tokens = self.split_special_tokens
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names

        with self._lock:
            self._set_truncation_and_padding(padding_strategy, truncation_strategy, max_length,
                                             stride, pad_to_multiple_of, padding_side)
            if self._tokenizer.encode_special_tokens != split_special_tokens:
                self._tokenizer.encode_special_tokens = split_special_tokens
            encodings = self._tokenizer.encode_batch(batch, add_special_tokens=add_special_tokens,
                                                     is_pretokenized=is_split_into_words)

        data: dict[str, list] = {"input_ids": []}
        if return_token_type_ids:
            data["token_type_ids"] = []
        if return_attention_mask:
            data["attention_mask"] = []
        if return_special_tokens_mask:
            data["special_tokens_mask"] = []
        if return_offsets_mapping:
            data["offset_mapping"] = []
        if return_length:
            data["length"] = []
        rows = []
        mapping = []
        for sample, encoding in enumerate(encodings):
            parts = [encoding]
            if return_overflowing_tokens and encoding.overflowing is not None:
                parts += encoding.overflowing
            for e in parts:
                rows.append(e)
                mapping.append(sample)
                data["input_ids"].append(e.ids)
                if return_token_type_ids:
                    data["token_type_ids"].append(e.type_ids)
                if return_attention_mask:
                    data["attention_mask"].append(e.attention_mask)
                if return_special_tokens_mask:
                    data["special_tokens_mask"].append(e.special_tokens_mask)
                if return_offsets_mapping:
                    data["offset_mapping"].append(e.offsets)
                if return_length:
                    data["length"].append(len(e.ids))
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = mapping
        for ids in data["input_ids"]:
            self._warn_if_too_long(ids, max_length, verbose)
        out = BatchEncoding(data, rows, tensor_type=return_tensors)
        if not is_batched and return_tensors is None and not return_overflowing_tokens:
            out = BatchEncoding({k: (v[0] if v and isinstance(v[0], list) else v)
                                 for k, v in out.items()}, out.encodings)
        return out

    def _warn_if_too_long(self, ids: list[int], max_length: int | None, verbose: bool) -> None:
        if max_length is None and len(ids) > self.model_max_length and verbose:
            self._warn_once("sequence-length",
                            "Token indices sequence length is longer than the specified maximum "
                            f"sequence length for this model ({len(ids)} > "
                            f"{self.model_max_length}). Running this sequence through the model "
                            "will result in indexing errors")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    # --- padding ----------------------------------------------------------------------------

    def pad(self, encoded_inputs: Any, padding: bool | str = True, max_length: int | None = None,
            pad_to_multiple_of: int | None = None, padding_side: str | None = None,
            return_attention_mask: bool | None = None, return_tensors: str | None = None,
            verbose: bool = True) -> BatchEncoding:
        """Pad already-encoded inputs (one, or a batch: a dict of lists or a list of dicts)."""
        if (isinstance(encoded_inputs, (list, tuple)) and encoded_inputs
                and isinstance(encoded_inputs[0], Mapping)):
            encoded_inputs = {key: [example[key] for example in encoded_inputs]
                              for key in encoded_inputs[0].keys()}
        else:
            encoded_inputs = dict(encoded_inputs)
        main = self.model_input_names[0]
        if main not in encoded_inputs:
            raise ValueError("You should supply an encoding or a list of encodings to this "
                             f"method that includes {main}, but you provided "
                             f"{list(encoded_inputs.keys())}")
        required = encoded_inputs[main]
        if required is None or (isinstance(required, Sized) and len(required) == 0):
            if return_attention_mask:
                encoded_inputs["attention_mask"] = []
            return BatchEncoding(encoded_inputs)
        first = required[0]
        if isinstance(first, (list, tuple)):
            for item in required:
                if len(item) != 0:
                    first = item[0]
                    break
        if not isinstance(first, (int, list, tuple)):
            import numpy as np

            if _is_torch_tensor(first):
                return_tensors = "pt" if return_tensors is None else return_tensors
            elif isinstance(first, (np.ndarray, np.generic)):
                return_tensors = "np" if return_tensors is None else return_tensors
            else:
                raise ValueError(f"type of {first} unknown: {type(first)}. Should be one of a "
                                 "python, numpy, or pytorch object.")
            encoded_inputs = {k: to_py_obj(v) for k, v in encoded_inputs.items()}
        padding_strategy, _, max_length, _ = self._get_padding_truncation_strategies(
            padding=padding, max_length=max_length, verbose=verbose)
        required = encoded_inputs[main]
        if required and not isinstance(required[0], (list, tuple)):
            out = self._pad(encoded_inputs, max_length, padding_strategy, pad_to_multiple_of,
                            padding_side, return_attention_mask)
            return BatchEncoding(out, tensor_type=return_tensors)
        batch_size = len(required)
        if not all(len(v) == batch_size for v in encoded_inputs.values()):
            raise ValueError("Some items in the output dictionary have a different batch size "
                             "than others.")
        if padding_strategy == PaddingStrategy.LONGEST:
            max_length = max(len(x) for x in required)
            padding_strategy = PaddingStrategy.MAX_LENGTH
        batch: dict[str, list] = {}
        for i in range(batch_size):
            row = self._pad({k: v[i] for k, v in encoded_inputs.items()}, max_length,
                            padding_strategy, pad_to_multiple_of, padding_side,
                            return_attention_mask)
            for key, value in row.items():
                batch.setdefault(key, []).append(value)
        return BatchEncoding(batch, tensor_type=return_tensors)

    def _pad(self, inputs: dict, max_length: int | None, padding_strategy: PaddingStrategy,
             pad_to_multiple_of: int | None, padding_side: str | None,
             return_attention_mask: bool | None) -> dict:
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        main = self.model_input_names[0]
        required = list(inputs[main])
        if padding_strategy == PaddingStrategy.LONGEST:
            max_length = len(required)
        if max_length is not None and pad_to_multiple_of is not None \
                and max_length % pad_to_multiple_of != 0:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        needs = padding_strategy != PaddingStrategy.DO_NOT_PAD and len(required) != max_length
        if return_attention_mask and "attention_mask" not in inputs:
            inputs["attention_mask"] = [1] * len(required)
        if needs:
            diff = max_length - len(required)
            side = padding_side if padding_side is not None else self.padding_side
            if side not in ("right", "left"):
                raise ValueError(f"Invalid padding strategy:{side}")

            def extend(values: list, fill: Any) -> list:
                return list(values) + [fill] * diff if side == "right" else [fill] * diff + list(values)

            if return_attention_mask:
                inputs["attention_mask"] = extend(inputs["attention_mask"], 0)
            if "token_type_ids" in inputs:
                inputs["token_type_ids"] = extend(inputs["token_type_ids"], self.pad_token_type_id)
            if "special_tokens_mask" in inputs:
                inputs["special_tokens_mask"] = extend(inputs["special_tokens_mask"], 1)
            inputs[main] = extend(required, self.pad_token_id)
        return inputs

    # --- decoding ---------------------------------------------------------------------------

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               **kwargs: Any) -> str | list[str]:
        """Ids back to text (a list of sequences gives a list of texts)."""
        token_ids = to_py_obj(token_ids)
        if isinstance(token_ids, (list, tuple)) and token_ids and isinstance(token_ids[0],
                                                                            (list, tuple)):
            clean = kwargs.pop("clean_up_tokenization_spaces", None)
            return [self._decode(seq, skip_special_tokens=skip_special_tokens,
                                 clean_up_tokenization_spaces=clean, **kwargs)
                    for seq in token_ids]
        return self._decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None,
                     **kwargs: Any) -> list[str]:
        sequences = to_py_obj(sequences)
        if len(sequences) == 0:
            return []
        result = self.decode(sequences, skip_special_tokens=skip_special_tokens,
                             clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)
        return [result] if isinstance(result, str) else result

    def _decode(self, token_ids: Any, skip_special_tokens: bool = False,
                clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        text = self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        clean = (clean_up_tokenization_spaces if clean_up_tokenization_spaces is not None
                 else self.clean_up_tokenization_spaces)
        if clean:
            if (type(self._tokenizer.model).__name__ == "BPE" and not
                    self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output):
                self._warn_once("bpe-cleanup",
                                "Ignoring clean_up_tokenization_spaces=True for BPE tokenizer "
                                f"{type(self).__name__}. The clean_up_tokenization "
                                "post-processing step is designed for WordPiece tokenizers and is "
                                "destructive for BPE (it strips spaces before punctuation).")
            else:
                text = self.clean_up_tokenization(text)
        return text

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """Remove the spaces WordPiece decoding leaves before punctuation and contractions."""
        return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!")
                .replace(" ,", ",").replace(" ' ", "'").replace(" n't", "n't")
                .replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve")
                .replace(" 're", "'re"))

    # --- chat templates ---------------------------------------------------------------------

    def get_chat_template(self, chat_template: str | None = None,
                          tools: list | None = None) -> str:
        """The template to use: `chat_template` itself, a named one, or the tokenizer's."""
        if isinstance(self.chat_template, dict):
            templates = self.chat_template
            if chat_template is not None and chat_template in templates:
                return templates[chat_template]
            if chat_template is None:
                if tools is not None and "tool_use" in templates:
                    return templates["tool_use"]
                if "default" in templates:
                    return templates["default"]
                raise ValueError(
                    "This model has multiple chat templates with no default specified! Please "
                    "either pass a chat template or the name of the template you wish to use to "
                    "the `chat_template` argument. Available template names are "
                    f"{sorted(templates)}.")
            return chat_template
        if chat_template is None:
            if self.chat_template is None:
                raise ValueError(
                    "Cannot use chat template functions because tokenizer.chat_template is not "
                    "set and no template argument was passed! Set tokenizer.chat_template to a "
                    "Jinja template (see transformers' chat templating guide).")
            return self.chat_template
        return chat_template

    def apply_chat_template(self, conversation: Any, tools: list | None = None,
                            documents: list | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False,
                            continue_final_message: bool | str = False, tokenize: bool = True,
                            padding: bool | str = False, truncation: bool = False,
                            max_length: int | None = None, return_tensors: str | None = None,
                            return_dict: bool = True, return_assistant_tokens_mask: bool = False,
                            tokenizer_kwargs: dict[str, Any] | None = None,
                            **kwargs: Any) -> Any:
        """Render a conversation (list of {"role", "content"} messages, or a batch of them)
        with the chat template, in a sandbox; with `tokenize` (the default) return its
        encoding (a BatchEncoding, or the input ids with `return_dict=False`)."""
        if kwargs.pop("sanitize_control_tokens", False):
            raise NotImplementedError("sanitize_control_tokens is not supported by Cove yet")
        if not tokenize:
            return_dict = False
        if return_assistant_tokens_mask and not (return_dict and tokenize):
            raise ValueError("`return_assistant_tokens_mask=True` requires `return_dict=True` and "
                             "`tokenize=True`")
        tokenizer_kwargs = tokenizer_kwargs or {}
        template = self.get_chat_template(chat_template, tools)
        if isinstance(conversation, (list, tuple)) and len(conversation) == 0:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at "
                             "least one message.")
        if isinstance(conversation, (list, tuple)) and (
                isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")):
            conversations, is_batched = list(conversation), True
        else:
            conversations, is_batched = [conversation], False
        # Imported here: jinja2 is only needed once a chat template is rendered.
        from cove.tokenizers import chat as chat_templates

        conversations = [chat_templates.normalize_messages(c) for c in conversations]
        if continue_final_message:
            if add_generation_prompt:
                raise ValueError(
                    "continue_final_message and add_generation_prompt are not compatible. Use "
                    "continue_final_message when you want the model to continue the final "
                    "message, and add_generation_prompt when you want to add a header that will "
                    "prompt it to start a new assistant message instead.")
            if return_assistant_tokens_mask:
                raise ValueError("continue_final_message is not compatible with "
                                 "return_assistant_tokens_mask.")
        variables = {**self.special_tokens_map, **kwargs}
        rendered, spans = chat_templates.render(
            conversations, template, tools=tools, documents=documents,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            return_assistant_tokens_mask=return_assistant_tokens_mask, **variables)
        if not tokenize:
            return rendered if is_batched else rendered[0]
        out = self(rendered if is_batched else rendered[0], padding=padding,
                   truncation=truncation, max_length=max_length, add_special_tokens=False,
                   return_tensors=return_tensors, **tokenizer_kwargs)
        if not return_dict:
            return out["input_ids"]
        if return_assistant_tokens_mask:
            rows = out["input_ids"] if is_batched or return_tensors else [out["input_ids"]]
            masks = []
            for i in range(len(rows)):
                mask = [0] * len(rows[i])
                row_spans = spans[i]
                at = 0
                for token, (start, end) in enumerate(out.encodings[i].offsets):
                    while at < len(row_spans) and start >= row_spans[at][1]:
                        at += 1
                    if at == len(row_spans):
                        break
                    if end > row_spans[at][0]:
                        mask[token] = 1
                masks.append(mask)
            out["assistant_masks"] = masks if is_batched or return_tensors else masks[0]
            if return_tensors:
                out.convert_to_tensors(tensor_type=return_tensors)
        return out

    # --- saving -----------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, legacy_format: bool | None = None,
                        filename_prefix: str | None = None, push_to_hub: bool = False,
                        **kwargs: Any) -> tuple[str, ...] | None:
        """Write tokenizer_config.json (special tokens included), tokenizer.json and the chat
        templates as .jinja files into `save_directory`, as transformers 5 does (no
        special_tokens_map.json); transformers loads the result. Returns the files' paths,
        joined to `save_directory` as given."""
        if os.path.isfile(save_directory):
            logger.error(f"Provided path ({save_directory}) should be a directory, not a file")
            return None
        if legacy_format:
            raise ValueError("Cove saves tokenizers in the unified tokenizer.json format only "
                             "(legacy_format=True would need the slow tokenizer's files).")
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        config_file = os.path.join(save_directory, f"{prefix}{TOKENIZER_CONFIG_FILE}")

        config = copy.deepcopy(self.init_kwargs)
        for key in ("add_bos_token", "add_eos_token"):
            config.pop(key, None)
        keys = (set(self.init_kwargs) - {"add_bos_token", "add_eos_token"}) | {"model_max_length"}
        for key in keys:
            try:
                config[key] = getattr(self, key)
            except AttributeError:
                pass
        config.update(self.special_tokens_map)
        if self._extra_special_tokens:
            config["extra_special_tokens"] = self.extra_special_tokens
        files: list[str] = [config_file]
        config.pop("chat_template", None)
        if self.chat_template is not None:
            if kwargs.get("save_jinja_files", True):
                files += self._save_chat_templates(save_directory, prefix)
            elif isinstance(self.chat_template, dict):
                config["chat_template"] = [{"name": k, "template": v}
                                           for k, v in self.chat_template.items()]
            else:
                config["chat_template"] = self.chat_template
        if self.response_template is not None:
            config["response_template"] = self.response_template
        if self.chat_control_tokens is not None:
            config["chat_control_tokens"] = list(self.chat_control_tokens)
        for key in (*self.vocab_files_names, "vocab_file", "merges_file", "tokenizer_file",
                    "added_tokens_decoder", "additional_special_tokens", "name_or_path",
                    "special_tokens_map_file", "device_map", "slow_tokenizer_class", "vocab",
                    "merges", "files_loaded", "is_local", "local_files_only"):
            config.pop(key, None)
        config = _saved_value(config)
        config["tokenizer_class"] = self.saved_class_name
        Path(config_file).write_text(json.dumps(config, indent=2, sort_keys=True,
                                                ensure_ascii=False) + "\n", encoding="utf-8")

        files += self._save_backend(save_directory, prefix)

        if push_to_hub:
            self._push_folder(directory, kwargs)
        return tuple(files)

    def _save_backend(self, save_directory: str | os.PathLike, prefix: str) -> list[str]:
        """Write the vocabulary: tokenizer.json (the paths written)."""
        tokenizer_file = os.path.join(save_directory, f"{prefix}{TOKENIZER_FILE}")
        with self._lock:  # saved with the truncation/padding it was loaded with
            truncation, padding = self._tokenizer.truncation, self._tokenizer.padding
            self._restore(self._json_truncation, self._json_padding)
            try:
                self._tokenizer.save(tokenizer_file)
            finally:
                self._restore(truncation, padding)
        return [tokenizer_file]

    def _restore(self, truncation: dict | None, padding: dict | None) -> None:
        if truncation is None:
            self._tokenizer.no_truncation()
        else:
            self._tokenizer.enable_truncation(**{k: truncation[k] for k in (
                "max_length", "stride", "strategy", "direction")})
        if padding is None:
            self._tokenizer.no_padding()
        else:
            length = padding.get("length")
            self._tokenizer.enable_padding(
                direction=padding["direction"], pad_id=padding["pad_id"],
                pad_type_id=padding["pad_type_id"], pad_token=padding["pad_token"],
                length=length, pad_to_multiple_of=padding.get("pad_to_multiple_of"))

    def _save_chat_templates(self, directory: str | os.PathLike, prefix: str) -> list[str]:
        written = []
        templates = (self.chat_template if isinstance(self.chat_template, dict)
                     else {"default": self.chat_template})
        for name, template in templates.items():
            if name == "default":
                path = os.path.join(directory, f"{prefix}{CHAT_TEMPLATE_FILE}")
            else:
                folder = os.path.join(directory, f"{prefix}{CHAT_TEMPLATE_DIR}")
                os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, f"{name}.jinja")
                if Path(path).resolve().parent != Path(folder).resolve():
                    raise ValueError(f"Invalid chat template name: {name!r}")
            Path(path).write_text(template, encoding="utf-8")
            written.append(path)
        return written

    def _push_folder(self, directory: Path, kwargs: dict[str, Any]) -> Any:
        from cove.hub import HubApi

        repo_id = kwargs.get("repo_id") or directory.name
        api = HubApi(token=kwargs.get("token"))
        repo_id = api.create_repo(repo_id, private=kwargs.get("private"), exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo_id, folder_path=str(directory),
                                 commit_message=kwargs.get("commit_message") or "Upload tokenizer",
                                 revision=kwargs.get("revision"))

    def push_to_hub(self, repo_id: str, commit_message: str | None = None,
                    private: bool | None = None, token: str | None = None,
                    revision: str | None = None, **kwargs: Any) -> Any:
        """Save the tokenizer to a temporary folder and upload it to `repo_id` (cove.hub)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return self._push_folder(Path(tmp), {"repo_id": repo_id, "private": private,
                                                 "token": token, "revision": revision,
                                                 "commit_message": commit_message})

    # --- loading ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *init_inputs: Any,
                        **kwargs: Any) -> PreTrainedTokenizerFast:
        """Load this class from a folder or a Hub repository (see AutoTokenizer)."""
        from cove.tokenizers.auto import load_tokenizer

        if init_inputs:
            raise TypeError("Cove tokenizers take keyword arguments only")
        return load_tokenizer(pretrained_model_name_or_path, tokenizer_class=cls, **kwargs)

    def __repr__(self) -> str:
        added = "\n\t".join(f"{k}: {v!r}," for k, v in self.added_tokens_decoder.items())
        if added:
            added = f"\n\t{added}\n"
        return (f"{type(self).__name__}(name_or_path='{self.name_or_path}', "
                f"vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
                f"padding_side='{self.padding_side}', truncation_side='{self.truncation_side}', "
                f"special_tokens={self.special_tokens_map}, added_tokens_decoder={{{added}}})")


# transformers 5's generic class is TokenizersBackend; PreTrainedTokenizerFast is its old name.
PreTrainedTokenizerFast = TokenizersBackend
PreTrainedTokenizerBase = TokenizersBackend
