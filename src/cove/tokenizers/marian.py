"""MarianTokenizer (OPUS-MT): two SentencePiece models and a vocab.json, no tokenizer.json.

As transformers' MarianTokenizer: source text is cut into pieces by `source.spm` (target text,
`text_target=`, by `target.spm`), a leading language code such as `>>fr<<` kept whole; each
piece takes its id from `vocab.json` (`target_vocab.json` for targets and decoding when
`separate_vocabs`), and a piece the vocabulary lacks is `<unk>`. `</s>` ends every sequence.
Decoding hands the pieces back to SentencePiece (special tokens are written as they are).

The pieces come from the `sentencepiece` package itself, run as a `tokenizers` pre-tokenizer in
front of a word-level vocabulary: Marian's vocabulary is not in SentencePiece's id order, so no
Rust-side SentencePiece model can give its ids. Such a custom step cannot be serialised: Marian
is saved as its own files (as transformers saves it), pickled by rebuilding from the models'
bytes, and has no character offsets (transformers' Marian, a Python tokenizer, has none either).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import NormalizedString, Tokenizer, models, pre_tokenizers, processors

from cove.tokenizers.base import PreTrainedTokenizerFast, _added_token_state

SPIECE_UNDERLINE = "▁"


def _processor(model: bytes, sp_model_kwargs: dict[str, Any]) -> Any:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(**sp_model_kwargs)
    processor.LoadFromSerializedProto(model)
    return processor


class _Pieces:
    """The pre-tokenizer: SentencePiece's pieces of each stretch of text between added tokens,
    after a leading language code (`>>xx<<`), which is kept as one piece."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def _split(self, index: int, normalized: NormalizedString) -> list[NormalizedString]:
        text = str(normalized)
        pieces: list[str] = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            pieces.append(text[:end + 2])
            text = text[end + 2:]
        pieces += self.processor.encode(text, out_type=str)
        return [NormalizedString(piece) for piece in pieces]

    def pre_tokenize(self, pretok: Any) -> None:
        pretok.split(self._split)


def _read_vocab(path: str | os.PathLike, what: str) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"MarianTokenizer: cannot read the {what} {path}: {e}") from None
    if not isinstance(vocab, dict):
        raise ValueError(f"MarianTokenizer: the {what} {path} is not a JSON object of "
                         "token -> id.")
    return vocab


def _read_model(path: Any, what: str) -> bytes:
    if path is None:
        raise ValueError(f"MarianTokenizer needs its {what} (source_spm=, target_spm= and "
                         "vocab=, or a folder with source.spm, target.spm and vocab.json).")
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"MarianTokenizer: cannot read the {what} {path}: {e}") from None


class MarianTokenizer(PreTrainedTokenizerFast):
    """Marian: `source_spm`, `target_spm` (SentencePiece models), `vocab` (vocab.json), and with
    `separate_vocabs=True` a `target_vocab_file`; `source_lang` / `target_lang` are recorded.
    `A </s>` (pairs `A B </s>`); `text_target=` uses the target model."""

    vocab_files_names = {"source_spm": "source.spm", "target_spm": "target.spm",
                         "vocab": "vocab.json", "target_vocab_file": "target_vocab.json"}
    optional_vocab_files = frozenset({"target_vocab_file"})
    default_special_tokens = {"unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>"}
    saved_class_name = "MarianTokenizer"

    def __init__(self, source_spm: str | os.PathLike | None = None,
                 target_spm: str | os.PathLike | None = None,
                 vocab: str | os.PathLike | None = None,
                 target_vocab_file: str | os.PathLike | None = None,
                 source_lang: str | None = None, target_lang: str | None = None,
                 separate_vocabs: bool = False, sp_model_kwargs: dict[str, Any] | None = None,
                 model_max_length: int = 512, **kwargs: Any) -> None:
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self.separate_vocabs = separate_vocabs
        self.source_lang, self.target_lang = source_lang, target_lang
        self._models = (_read_model(source_spm, "source SentencePiece model"),
                        _read_model(target_spm, "target SentencePiece model"))
        if vocab is None:
            raise ValueError("MarianTokenizer needs its vocabulary (vocab=, a vocab.json).")
        self.encoder = _read_vocab(vocab, "vocabulary")
        if separate_vocabs:
            if target_vocab_file is None:
                raise ValueError("MarianTokenizer with separate_vocabs=True needs "
                                 "target_vocab_file (target_vocab.json).")
            self.target_encoder = _read_vocab(target_vocab_file, "target vocabulary")
        else:
            self.target_encoder = self.encoder
        unk = str(kwargs.get("unk_token", self.default_special_tokens["unk_token"]))
        for vocabulary in (self.encoder, self.target_encoder):
            if unk not in vocabulary:
                raise ValueError(f"MarianTokenizer: the unknown token {unk!r} must be in the "
                                 "vocabulary (vocab.json), as every piece outside it maps to it.")
        super().__init__(source_lang=source_lang, target_lang=target_lang,
                         separate_vocabs=separate_vocabs, sp_model_kwargs=self.sp_model_kwargs,
                         model_max_length=model_max_length, **kwargs)

    # -- the backends --------------------------------------------------------------------------
    def _build_backend(self, kwargs: dict[str, Any]) -> Tokenizer:
        unk = str(kwargs["unk_token"])
        self.spm_source, self.spm_target = (_processor(m, self.sp_model_kwargs)
                                            for m in self._models)
        self._source_steps = (models.WordLevel(self.encoder, unk_token=unk),
                              pre_tokenizers.PreTokenizer.custom(_Pieces(self.spm_source)))
        target_model = (models.WordLevel(self.target_encoder, unk_token=unk)
                        if self.separate_vocabs else self._source_steps[0])
        self._target_steps = (target_model,
                              pre_tokenizers.PreTokenizer.custom(_Pieces(self.spm_target)))
        backend = Tokenizer(self._source_steps[0])
        backend.pre_tokenizer = self._source_steps[1]
        return backend

    def _class_post_processor(self) -> Any:
        eos = str(self.eos_token)
        return processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A $B {eos}",
                                             special_tokens=[(eos, self.eos_token_id)])

    @contextlib.contextmanager
    def _target_mode(self) -> Iterator[None]:
        """Encode with the target SentencePiece model (and target vocabulary) meanwhile."""
        with self._lock:
            self._tokenizer.model, self._tokenizer.pre_tokenizer = self._target_steps
            try:
                yield
            finally:
                self._tokenizer.model, self._tokenizer.pre_tokenizer = self._source_steps

    @property
    def is_fast(self) -> bool:
        return False  # no offsets, as transformers' (Python) MarianTokenizer

    @property
    def supported_language_codes(self) -> list[str]:
        """The `>>xx<<` codes of a shared vocabulary (multilingual targets)."""
        if self.separate_vocabs:
            return []
        return [k for k in self.encoder if k.startswith(">>") and k.endswith("<<")]

    def _encode_plus(self, text: Any, text_pair: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError(
                "return_offsets_mapping is not available with MarianTokenizer: its pieces come "
                "from SentencePiece, which keeps no character offsets (transformers' Marian "
                "tokenizer has none either).")
        return super()._encode_plus(text, text_pair, **kwargs)

    # -- decoding ------------------------------------------------------------------------------
    def _id_to_piece(self, index: int, use_source: bool) -> str:
        added = self._tokenizer.get_added_tokens_decoder().get(index)
        if added is not None:
            return added.content
        if self.separate_vocabs:
            piece = self._target_steps[0].id_to_token(index)
        else:
            piece = self._tokenizer.id_to_token(index)
        if piece is None:  # outside the vocabulary: the SentencePiece model's own piece
            processor = self.spm_source if use_source else self.spm_target
            if 0 <= index < processor.get_piece_size():
                piece = processor.id_to_piece(index)
        return piece if piece else str(self.unk_token)

    def _decode(self, token_ids: Any, skip_special_tokens: bool = False,
                clean_up_tokenization_spaces: bool | None = None,
                use_source_tokenizer: bool | None = None, **kwargs: Any) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        # transformers 5: the source model decodes unless the vocabularies are separate
        use_source = (not self.separate_vocabs if use_source_tokenizer is None
                      else use_source_tokenizer)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        tokens = [self._id_to_piece(int(i), use_source) for i in token_ids if int(i) not in skip]
        text = self._join(tokens, self.spm_source if use_source else self.spm_target)
        clean = (clean_up_tokenization_spaces if clean_up_tokenization_spaces is not None
                 else self.clean_up_tokenization_spaces)
        return self.clean_up_tokenization(text) if clean else text

    def _join(self, tokens: list[str], processor: Any) -> str:
        """Pieces back to text: SentencePiece decodes the runs between special tokens, which
        are written as they are, each followed by a space."""
        special = set(self.all_special_tokens)
        out, run = "", []
        for token in tokens:
            if token in special:
                out += processor.decode_pieces(run) + token + " "
                run = []
            else:
                run.append(token)
        out += processor.decode_pieces(run)
        return out.replace(SPIECE_UNDERLINE, " ").strip()

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._join(tokens, self.spm_target if self.separate_vocabs else self.spm_source)

    # -- saving and pickling -------------------------------------------------------------------
    def _save_backend(self, save_directory: str | os.PathLike, prefix: str) -> list[str]:
        """source.spm, target.spm, vocab.json (and target_vocab.json), as transformers saves
        Marian (which has no tokenizer.json)."""
        files = []
        for name, model in zip(("source.spm", "target.spm"), self._models, strict=True):
            path = os.path.join(save_directory, f"{prefix}{name}")
            Path(path).write_bytes(model)
            files.append(path)
        vocabularies = [("vocab.json", self.encoder)]
        if self.separate_vocabs:
            vocabularies.append(("target_vocab.json", self.target_encoder))
        for name, vocabulary in vocabularies:
            path = os.path.join(save_directory, f"{prefix}{name}")
            Path(path).write_text(json.dumps(vocabulary, indent=2, ensure_ascii=False),
                                  encoding="utf-8")
            files.append(path)
        return files

    def __getstate__(self) -> dict:
        # The SentencePiece steps cannot be pickled: kept as the models' bytes, rebuilt after.
        state = super().__getstate__()
        for key in ("_tokenizer", "_source_steps", "_target_steps", "spm_source", "spm_target"):
            state.pop(key, None)
        state["_added"] = [_added_token_state(t) for _, t in sorted(
            self._tokenizer.get_added_tokens_decoder().items())]
        state["_post_processor"] = self._tokenizer.post_processor
        return state

    def __setstate__(self, state: dict) -> None:
        from tokenizers import AddedToken

        added = state.pop("_added")
        post_processor = state.pop("_post_processor")
        super().__setstate__(state)
        self._tokenizer = self._build_backend({"unk_token": self.unk_token})
        self._tokenizer.add_tokens([AddedToken(**token) for token in added])
        self._tokenizer.post_processor = post_processor

