"""AutoTokenizer: pick the tokenizer class of a folder or Hub repository and load it.

The files come from the folder, or through cove.hub (the shared Hugging Face cache layout):
tokenizer_config.json, tokenizer.json, chat_template.jinja, and when there is no tokenizer.json
the vocabulary files the class builds from (vocab.txt, vocab.json + merges.txt, a SentencePiece
.model); special_tokens_map.json and added_tokens.json for configurations that predate
`added_tokens_decoder`; config.json when the tokenizer configuration names no class.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from tokenizers import AddedToken

from cove.tokenizers.base import (
    ADDED_TOKENS_FILE,
    CHAT_TEMPLATE_DIR,
    CHAT_TEMPLATE_FILE,
    SPECIAL_TOKENS_ATTRIBUTES,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    PreTrainedTokenizerFast,
    as_added_token,
)
from cove.tokenizers.models import CLASSES, MODEL_TYPES

logger = logging.getLogger("cove.tokenizers")

SPM_NAMES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
FILE_KEYS = ("vocab_file", "merges_file", "tokenizer_file")


class _Files:
    """Finds a model's files in a local folder or a Hub repository (through cove.hub)."""

    def __init__(self, name_or_path: str, *, subfolder: str | None, revision: str | None,
                 token: Any, cache_dir: Any, local_files_only: bool, force_download: bool) -> None:
        self.name = name_or_path
        self.folder = Path(name_or_path, subfolder or "") if os.path.isdir(name_or_path) else None
        self.subfolder = subfolder
        self.revision = revision
        self.token = token
        self.cache_dir = cache_dir
        self.local_files_only = local_files_only
        self.force_download = force_download
        self.unreachable: list[str] = []  # optional files neither cached nor downloadable now

    @property
    def is_local(self) -> bool:
        return self.folder is not None

    def get(self, filename: str) -> str | None:
        """The local path of `filename`, or None when the model does not have it."""
        if self.folder is not None:
            path = self.folder / filename
            return str(path) if path.is_file() else None
        from cove.hub import EntryNotFoundError, LocalEntryNotFoundError, hf_hub_download

        try:
            return hf_hub_download(self.name, filename, subfolder=self.subfolder,
                                   revision=self.revision, cache_dir=self.cache_dir,
                                   token=self.token, local_files_only=self.local_files_only,
                                   force_download=self.force_download)
        except LocalEntryNotFoundError:
            self.unreachable.append(filename)
            return None
        except EntryNotFoundError:
            return None

    def extra_templates(self, snapshot_file: str | None) -> dict[str, str]:
        """Named chat templates: additional_chat_templates/NAME.jinja -> local path."""
        if self.folder is not None:
            folder = self.folder / CHAT_TEMPLATE_DIR
            return {p.name.removesuffix(".jinja"): str(p) for p in sorted(folder.glob("*.jinja"))}
        import httpx

        from cove.hub import EntryNotFoundError, HubApi, HubHTTPError, OfflineModeIsEnabled
        from cove.hub import config as hub_config

        if self.local_files_only or hub_config.offline():
            if snapshot_file is None:  # what the cache holds of the snapshot
                return {}
            folder = Path(snapshot_file).parent / CHAT_TEMPLATE_DIR
            names = [p.name for p in sorted(folder.glob("*.jinja"))]
        else:
            where = "/".join(p for p in (self.subfolder, CHAT_TEMPLATE_DIR) if p)
            try:
                names = sorted(e.path.rsplit("/", 1)[-1] for e in HubApi(token=self.token)
                               .list_repo_tree(self.name, where, revision=self.revision)
                               if e.path.endswith(".jinja"))
            except (EntryNotFoundError, HubHTTPError, OfflineModeIsEnabled, httpx.HTTPError):
                names = []
        found = {}
        for name in names:
            path = self.get(f"{CHAT_TEMPLATE_DIR}/{name}")
            if path is not None:
                found[name.removesuffix(".jinja")] = path
        return found

    def spm_names(self) -> list[str]:
        names = list(SPM_NAMES)
        if self.folder is not None:
            names += sorted(p.name for p in self.folder.glob("*.model") if p.name not in names)
        return names


def _read_json(path: str | None) -> dict:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _added_tokens(obj: Any) -> Any:
    """Saved AddedTokens ({"__type": "AddedToken", ...}) as AddedToken objects, recursively."""
    if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
        return as_added_token(obj)
    if isinstance(obj, (list, tuple)):
        return [_added_tokens(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _added_tokens(v) for k, v in obj.items()}
    return obj


def _json_is_byte_level(path: str | None) -> bool:
    if path is None:
        return False
    data = _read_json(path)
    parts = json.dumps([data.get("pre_tokenizer"), data.get("decoder")])
    return '"ByteLevel"' in parts


def _class_for(name: str | None) -> type[PreTrainedTokenizerFast] | None:
    if not name:
        return None
    return CLASSES.get(name) or CLASSES.get(name.removesuffix("Fast"))


def load_tokenizer(pretrained_model_name_or_path: str | os.PathLike, *,
                   tokenizer_class: type[PreTrainedTokenizerFast] | None = None,
                   revision: str | None = None, token: str | bool | None = None,
                   cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                   trust_remote_code: bool = False, subfolder: str | None = None,
                   force_download: bool = False, **kwargs: Any) -> PreTrainedTokenizerFast:
    if trust_remote_code:
        raise ValueError(
            "trust_remote_code=True is not supported: Cove never runs code from a model "
            "repository. Load a tokenizer that ships a tokenizer.json (or standard vocabulary "
            "files) without trust_remote_code.")
    for key in ("use_fast", "_from_auto", "_from_pipeline", "_commit_hash", "proxies",
                "resume_download", "code_revision"):
        kwargs.pop(key, None)
    if kwargs.get("tokenizer_type") is not None:
        raise ValueError("tokenizer_type= is not supported by Cove's AutoTokenizer")
    kwargs.pop("tokenizer_type", None)
    gguf_file = kwargs.pop("gguf_file", None)
    if gguf_file is not None:  # the GGUF's vocabulary, converted once into a cache folder
        from cove.models.gguf import load_gguf

        hub = {"revision": revision, "token": token, "cache_dir": cache_dir,
               "local_files_only": local_files_only, "force_download": force_download,
               "subfolder": subfolder}
        pretrained_model_name_or_path = load_gguf(
            pretrained_model_name_or_path, gguf_file, weights=False,
            **{k: v for k, v in hub.items() if v})
        revision = token = cache_dir = subfolder = None
    name = str(pretrained_model_name_or_path)
    if os.path.isfile(name):
        return _load_single_file(name, tokenizer_class, kwargs)
    files = _Files(name, subfolder=subfolder, revision=revision, token=token,
                   cache_dir=cache_dir, local_files_only=local_files_only,
                   force_download=force_download)

    config_path = files.get(TOKENIZER_CONFIG_FILE)
    tokenizer_config = _read_json(config_path)
    tokenizer_json = files.get(TOKENIZER_FILE)
    declared = tokenizer_config.get("tokenizer_class")
    if "auto_map" in tokenizer_config:
        logger.warning(f"{name} names a custom tokenizer class in its tokenizer_config.json "
                       "(auto_map); Cove does not run repository code and loads it with its "
                       "built-in classes instead.")
    cls = tokenizer_class
    if cls is None:
        if declared:
            cls = _class_for(declared)
            if cls is None and tokenizer_json is None:
                raise ValueError(
                    f"{name} has no tokenizer.json, and Cove cannot build its tokenizer class "
                    f"{declared!r} from the vocabulary files (known: {sorted(set(CLASSES))}).")
            if cls is not None and cls.__name__ == "LlamaTokenizer" \
                    and _json_is_byte_level(tokenizer_json):
                cls = None  # a byte-level tokenizer.json under a Llama name (as transformers)
            cls = cls or PreTrainedTokenizerFast
        else:
            model_config = _read_json(files.get("config.json"))
            cls = _class_for(model_config.get("tokenizer_class")) or MODEL_TYPES.get(
                model_config.get("model_type", ""))
    vocab_files: dict[str, str | None] = {}
    if tokenizer_json is None:
        cls, vocab_files = _vocabulary_files(files, cls, name)
    elif cls is None:
        cls = PreTrainedTokenizerFast

    init_kwargs = dict(tokenizer_config)
    init_kwargs.pop("tokenizer_class", None)
    init_kwargs.pop("auto_map", None)
    init_kwargs.pop("init_inputs", None)
    if tokenizer_json is not None:
        init_kwargs.pop("add_bos_token", None)
        init_kwargs.pop("add_eos_token", None)
    templates: dict[str, str] = {}
    template_path = files.get(CHAT_TEMPLATE_FILE)
    if template_path is not None:
        templates["default"] = Path(template_path).read_text(encoding="utf-8")
    for template_name, path in files.extra_templates(config_path or tokenizer_json).items():
        templates[template_name] = Path(path).read_text(encoding="utf-8")
    if len(templates) == 1 and "default" in templates:
        init_kwargs["chat_template"] = templates["default"]
    elif templates:
        init_kwargs["chat_template"] = templates
    init_kwargs.update(kwargs)
    if "additional_special_tokens" in init_kwargs and not init_kwargs.get("extra_special_tokens"):
        init_kwargs["extra_special_tokens"] = init_kwargs.pop("additional_special_tokens")

    decoder: dict[int, AddedToken] = {}
    by_content: dict[str, AddedToken] = {}
    if "added_tokens_decoder" in init_kwargs:
        for index, tok in (init_kwargs["added_tokens_decoder"] or {}).items():
            tok = AddedToken(**{k: v for k, v in tok.items() if k != "__type"}) \
                if isinstance(tok, dict) else tok
            if not isinstance(tok, AddedToken):
                raise TypeError(f"Found a {type(tok)} in the saved `added_tokens_decoder`, "
                                "should be a dictionary or an AddedToken instance")
            decoder[int(index)] = tok
            by_content[str(tok)] = tok
    else:
        _legacy_special_tokens(files, init_kwargs, kwargs, decoder, by_content, tokenizer_json)
    init_kwargs["added_tokens_decoder"] = decoder
    init_kwargs = _added_tokens(init_kwargs)
    if by_content:
        for key in SPECIAL_TOKENS_ATTRIBUTES:
            if init_kwargs.get(key) is not None:
                init_kwargs[key] = by_content.get(str(init_kwargs[key]), init_kwargs[key])
    # Vocabulary paths come from the repository, never from its (untrusted) configuration.
    for key in {*FILE_KEYS, *cls.vocab_files_names}:
        if kwargs.get(key) is None:
            init_kwargs[key] = vocab_files.get(key)
    if kwargs.get("tokenizer_file") is None:
        init_kwargs["tokenizer_file"] = tokenizer_json
    init_kwargs["name_or_path"] = name
    try:
        return cls(**init_kwargs)
    except ValueError as e:
        if files.unreachable and "Couldn't instantiate" in str(e):
            raise OSError(
                f"Can't load the tokenizer of {name!r}: {', '.join(files.unreachable)} are not "
                "in the local cache and the Hub cannot be reached (or offline mode is on).") from e
        raise


def _vocabulary_files(files: _Files, cls: type[PreTrainedTokenizerFast] | None,
                      name: str) -> tuple[type[PreTrainedTokenizerFast], dict[str, str | None]]:
    """The vocabulary files for a tokenizer without tokenizer.json (and the class, if unknown)."""
    found: dict[str, str | None] = {}
    wanted = dict(cls.vocab_files_names) if cls is not None else {}
    wanted.pop("tokenizer_file", None)
    if wanted:
        for key, filename in wanted.items():
            found[key] = files.get(filename)
        if found.get("vocab_file") is None and wanted.get("vocab_file", "").endswith(".model"):
            for filename in files.spm_names():  # e.g. a Llama tokenizer shipped as spiece.model
                found["vocab_file"] = files.get(filename)
                if found["vocab_file"]:
                    break
        missing = [wanted[k] for k, v in found.items()
                   if v is None and k not in cls.optional_vocab_files]
        if not missing:
            return cls, found
        raise _no_files(files, name, f"{cls.__name__} needs {', '.join(missing)}")
    if (path := files.get("vocab.txt")) is not None:
        return CLASSES["BertTokenizer"], {"vocab_file": path}
    vocab, merges = files.get("vocab.json"), None
    if vocab is not None and (merges := files.get("merges.txt")) is not None:
        return CLASSES["GPT2Tokenizer"], {"vocab_file": vocab, "merges_file": merges}
    for filename in files.spm_names():
        if (path := files.get(filename)) is not None:  # read as SentencePiece runs it
            return PreTrainedTokenizerFast, {"vocab_file": path}
    raise _no_files(files, name, "found none of tokenizer.json, vocab.txt, vocab.json + "
                                 "merges.txt or a SentencePiece .model")


def _no_files(files: _Files, name: str, detail: str) -> OSError:
    where = "folder" if files.is_local else "repository"
    message = f"Can't load a tokenizer from the {where} {name!r}: {detail}."
    if files.unreachable:
        message += (f" ({', '.join(sorted(set(files.unreachable)))} could not be checked: not in "
                    "the local cache, and the Hub cannot be reached or offline mode is on.)")
    return OSError(message)


def _legacy_special_tokens(files: _Files, init_kwargs: dict, kwargs: dict,
                           decoder: dict[int, AddedToken], by_content: dict[str, AddedToken],
                           tokenizer_json: str | None) -> None:
    """Configurations without `added_tokens_decoder`: special_tokens_map.json,
    added_tokens.json and tokenizer.json's added tokens, as transformers reads them."""
    special_map = _read_json(files.get(SPECIAL_TOKENS_MAP_FILE))
    for key, value in special_map.items():
        if kwargs.get(key):
            continue  # what the caller passes wins
        if key in ("additional_special_tokens", "extra_special_tokens") \
                and isinstance(value, list):
            existing = list(init_kwargs.get("extra_special_tokens") or [])
            for tok in value:
                if isinstance(tok, dict):
                    tok = AddedToken(**{k: v for k, v in tok.items()
                                        if k not in ("special", "__type")}, special=True)
                if tok not in existing:
                    existing.append(tok)
            init_kwargs["extra_special_tokens"] = existing
            continue
        if isinstance(value, dict):
            value = AddedToken(**{k: v for k, v in value.items()
                                  if k not in ("special", "__type")}, special=True)
        init_kwargs[key] = value
    added_path = files.get(ADDED_TOKENS_FILE)
    if added_path is not None:
        special = {str(init_kwargs[k]) for k in SPECIAL_TOKENS_ATTRIBUTES if init_kwargs.get(k)}
        special.update(str(t) for t in (init_kwargs.get("extra_special_tokens") or []))
        for content, index in _read_json(added_path).items():
            is_special = content in special
            tok = AddedToken(content, rstrip=False, lstrip=False, normalized=not is_special,
                             special=is_special)
            decoder[int(index)] = tok
            by_content[content] = tok
    if tokenizer_json is not None:
        for entry in _read_json(tokenizer_json).get("added_tokens", []):
            entry = dict(entry)
            index = entry.pop("id")
            tok = AddedToken(**entry)
            decoder[int(index)] = tok
            by_content[str(tok)] = tok


def _load_single_file(path: str, tokenizer_class: type[PreTrainedTokenizerFast] | None,
                      kwargs: dict[str, Any]) -> PreTrainedTokenizerFast:
    """A path to a tokenizer.json or a single vocabulary file (legacy transformers usage)."""
    cls = tokenizer_class
    if path.endswith(".json") and (cls is None or "vocab.json" not in cls.vocab_files_names.values()):
        return (cls or PreTrainedTokenizerFast)(tokenizer_file=path, name_or_path=path, **kwargs)
    if cls is None:
        if path.endswith(".txt"):
            cls = CLASSES["BertTokenizer"]
        elif path.endswith(".model"):
            cls = PreTrainedTokenizerFast
        else:
            raise ValueError(f"Can't tell which tokenizer {path} is: pass a folder instead")
    if len([k for k in cls.vocab_files_names if k != "tokenizer_file"]) > 1:
        raise ValueError(f"Calling {cls.__name__}.from_pretrained() with the path to a single "
                         "file is not supported for this tokenizer. Use a model identifier or "
                         "the path to a directory instead.")
    return cls(vocab_file=path, name_or_path=path, **kwargs)


class AutoTokenizer:
    """Loads the right tokenizer class for a folder or a Hub repository.

        tokenizer = AutoTokenizer.from_pretrained("alice/tiny-bert")
        batch = tokenizer(["a text", "another"], padding=True, return_tensors="pt")
    """

    def __init__(self) -> None:
        raise OSError("AutoTokenizer is designed to be instantiated using the "
                      "`AutoTokenizer.from_pretrained(pretrained_model_name_or_path)` method.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *inputs: Any,
                        revision: str | None = None, token: str | bool | None = None,
                        cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, trust_remote_code: bool = False,
                        **kwargs: Any) -> PreTrainedTokenizerFast:
        """Load the tokenizer of a local folder or a Hub repository id.

        `revision` is a branch, tag or commit; `token`, `cache_dir` and `local_files_only`
        work as in cove.hub. Other keyword arguments override tokenizer_config.json (special
        tokens, `model_max_length`, `padding_side`, `add_prefix_space`, ...).
        `trust_remote_code=True` is refused: Cove never runs repository code.
        """
        if inputs:
            raise TypeError("AutoTokenizer.from_pretrained takes keyword arguments only after "
                            "the model name or path")
        return load_tokenizer(pretrained_model_name_or_path, revision=revision, token=token,
                              cache_dir=cache_dir, local_files_only=local_files_only,
                              trust_remote_code=trust_remote_code, **kwargs)
