"""The named tokenizer classes: how each builds its backend from vocabulary files.

With a `tokenizer.json` every class loads it as it is; these classes differ in their default
special tokens, `model_input_names`, padding side, and in how they build the pipeline when only
the model's original vocabulary files exist (vocab.txt, vocab.json + merges.txt, a
SentencePiece .model), with the special tokens around sequences that the model expects.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Tokenizer, processors

from cove.tokenizers import builders
from cove.tokenizers.base import PreTrainedTokenizerFast
from cove.tokenizers.marian import MarianTokenizer


def _file_or_data(kwargs: dict[str, Any], data_key: str, file_key: str) -> Any:
    value = kwargs.pop(data_key, None)
    path = kwargs.get(file_key)
    return value if value is not None else path


class BertTokenizer(PreTrainedTokenizerFast):
    """BERT: WordPiece over `vocab.txt`, lower-casing and accent stripping per config,
    `[CLS] A [SEP] (B [SEP])` with token type ids."""

    vocab_files_names = {"vocab_file": "vocab.txt", "tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    default_special_tokens = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                              "cls_token": "[CLS]", "mask_token": "[MASK]"}
    saved_class_name = "BertTokenizer"
    backend_model = "WordPiece"

    def __init__(self, vocab: str | dict[str, int] | None = None, do_lower_case: bool = True,
                 tokenize_chinese_chars: bool = True, strip_accents: bool | None = None,
                 **kwargs: Any) -> None:
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        self._vocab_arg = vocab
        super().__init__(do_lower_case=do_lower_case,
                         tokenize_chinese_chars=tokenize_chinese_chars,
                         strip_accents=strip_accents, **kwargs)

    def _build_backend(self, kwargs: dict[str, Any]) -> Tokenizer | None:
        vocab = self._vocab_arg if self._vocab_arg is not None else kwargs.get("vocab_file")
        if vocab is None:  # an empty tokenizer knows its special tokens only
            vocab = {str(kwargs[k]): i for i, k in enumerate(
                ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"))
                if kwargs.get(k) is not None}
        return self._make_backend(kwargs, vocab, None, None)

    def _make_backend(self, kwargs: dict[str, Any], vocab: Any, merges: Any,
                      charsmap: bytes | None) -> Tokenizer | None:
        return builders.wordpiece(vocab, unk_token=str(kwargs.get("unk_token")),
                                  do_lower_case=self.do_lower_case,
                                  strip_accents=self.strip_accents,
                                  tokenize_chinese_chars=self.tokenize_chinese_chars)

    def _class_post_processor(self) -> Any:
        cls, sep = self.cls_token, self.sep_token
        cls_id = self.cls_token_id if self.cls_token_id is not None else 2
        sep_id = self.sep_token_id if self.sep_token_id is not None else 3
        return processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(str(cls), cls_id), (str(sep), sep_id)])


class DistilBertTokenizer(BertTokenizer):
    """DistilBERT: BERT's tokenizer without token type ids."""

    model_input_names = ["input_ids", "attention_mask"]
    saved_class_name = "DistilBertTokenizer"


class MPNetTokenizer(BertTokenizer):
    """MPNet: BERT's WordPiece with RoBERTa's `<s> A </s></s> B </s>` layout."""

    model_input_names = ["input_ids", "attention_mask"]
    default_special_tokens = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                              "cls_token": "<s>", "unk_token": "[UNK]", "pad_token": "<pad>",
                              "mask_token": "<mask>"}
    saved_class_name = "MPNetTokenizer"

    def __init__(self, vocab: str | dict[str, int] | None = None, **kwargs: Any) -> None:
        for key, default in self.default_special_tokens.items():
            value = kwargs.get(key, default)
            if isinstance(value, str):  # the mask token eats the space before it
                value = AddedToken(value, lstrip=key == "mask_token", rstrip=False)
            kwargs[key] = value
        super().__init__(vocab=vocab, **kwargs)

    def _class_post_processor(self) -> Any:
        cls_id = self.cls_token_id if self.cls_token_id is not None else 0
        sep_id = self.sep_token_id if self.sep_token_id is not None else 2
        return processors.RobertaProcessing((self.sep_token, sep_id), (self.cls_token, cls_id),
                                            trim_offsets=True, add_prefix_space=False)


class GPT2Tokenizer(PreTrainedTokenizerFast):
    """GPT-2: byte-level BPE over `vocab.json` + `merges.txt`; no special tokens around
    sequences unless `add_bos_token` / `add_eos_token`."""

    vocab_files_names = {"vocab_file": "vocab.json", "merges_file": "merges.txt",
                         "tokenizer_file": "tokenizer.json"}
    default_special_tokens = {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
                              "eos_token": "<|endoftext|>", "pad_token": None}
    saved_class_name = "GPT2Tokenizer"
    backend_model = "BPE"

    def __init__(self, vocab: str | dict[str, int] | None = None,
                 merges: str | list | None = None, errors: str = "replace",
                 add_prefix_space: bool = False, **kwargs: Any) -> None:
        self.add_prefix_space = add_prefix_space
        self.errors = errors
        self._vocab_arg, self._merges_arg = vocab, merges
        super().__init__(errors=errors, add_prefix_space=add_prefix_space, **kwargs)

    def _build_backend(self, kwargs: dict[str, Any]) -> Tokenizer | None:
        vocab = self._vocab_arg if self._vocab_arg is not None else kwargs.get("vocab_file")
        merges = self._merges_arg if self._merges_arg is not None else kwargs.get("merges_file")
        return self._make_backend(kwargs, vocab if vocab is not None else {}, merges, None)

    def _make_backend(self, kwargs: dict[str, Any], vocab: Any, merges: Any,
                      charsmap: bytes | None) -> Tokenizer | None:
        return builders.byte_level_bpe(vocab, merges, add_prefix_space=self.add_prefix_space)


class RobertaTokenizer(GPT2Tokenizer):
    """RoBERTa: GPT-2's byte-level BPE with `<s> A </s></s> B </s>` and trimmed offsets."""

    default_special_tokens = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                              "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
                              "mask_token": "<mask>"}
    saved_class_name = "RobertaTokenizer"

    def __init__(self, vocab: str | dict[str, int] | None = None,
                 merges: str | list | None = None, add_prefix_space: bool = False,
                 trim_offsets: bool = True, **kwargs: Any) -> None:
        self.trim_offsets = trim_offsets
        super().__init__(vocab=vocab, merges=merges, add_prefix_space=add_prefix_space,
                         trim_offsets=trim_offsets, **kwargs)

    def _class_post_processor(self) -> Any:
        return processors.RobertaProcessing((self.sep_token, self.sep_token_id),
                                            (self.cls_token, self.cls_token_id),
                                            trim_offsets=self.trim_offsets,
                                            add_prefix_space=self.add_prefix_space)


class LlamaTokenizer(PreTrainedTokenizerFast):
    """Llama / Mistral: SentencePiece BPE with byte fallback (from `tokenizer.model`), padded
    on the left; `add_bos_token` / `add_eos_token` from the configuration."""

    vocab_files_names = {"vocab_file": "tokenizer.model", "tokenizer_file": "tokenizer.json"}
    padding_side = "left"
    default_special_tokens = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    saved_class_name = "LlamaTokenizer"
    backend_model = "BPE"

    def __init__(self, clean_up_tokenization_spaces: bool = False,
                 use_default_system_prompt: bool = False, legacy: bool = False,
                 add_prefix_space: bool | None = None, **kwargs: Any) -> None:
        self.add_prefix_space = add_prefix_space if add_prefix_space is not None else True
        self.legacy = legacy
        self.use_default_system_prompt = use_default_system_prompt
        super().__init__(clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                         use_default_system_prompt=use_default_system_prompt,
                         add_prefix_space=add_prefix_space, **kwargs)

    def _build_backend(self, kwargs: dict[str, Any]) -> Tokenizer | None:
        path = kwargs.get("vocab_file")
        if path is None:
            return None
        proto = builders.load_spm(path)
        _spm_extra_special_tokens(proto, kwargs)
        if proto.trainer_spec.model_type == builders.SPM_UNIGRAM:
            return builders.spm_unigram([(p.piece, p.score) for p in proto.pieces],
                                        unk_id=proto.trainer_spec.unk_id,
                                        charsmap=proto.normalizer_spec.precompiled_charsmap)
        pieces = [p.piece for p in proto.pieces]
        return self._make_backend(kwargs, {piece: i for i, piece in enumerate(pieces)},
                                  builders.spm_merges(pieces), None)

    def _make_backend(self, kwargs: dict[str, Any], vocab: Any, merges: Any,
                      charsmap: bytes | None) -> Tokenizer | None:
        return builders.spm_bpe(vocab, merges, add_prefix_space=self.add_prefix_space,
                                legacy=self.legacy)


class T5Tokenizer(PreTrainedTokenizerFast):
    """T5: SentencePiece Unigram (from `spiece.model`) plus `extra_ids` sentinel tokens
    `<extra_id_N>`; `A </s> (B </s>)`."""

    vocab_files_names = {"vocab_file": "spiece.model", "tokenizer_file": "tokenizer.json"}
    default_special_tokens = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    saved_class_name = "T5Tokenizer"
    backend_model = "Unigram"

    def __init__(self, extra_ids: int = 100, **kwargs: Any) -> None:
        self._extra_ids = extra_ids
        super().__init__(extra_ids=extra_ids, **kwargs)

    def _sentinels(self) -> list[str]:
        return [f"<extra_id_{i}>" for i in range(self._extra_ids)]

    def _build_backend(self, kwargs: dict[str, Any]) -> Tokenizer | None:
        path = kwargs.get("vocab_file")
        if path is None:
            return None
        proto = builders.load_spm(path)
        if _configured_extra_tokens(kwargs) is None:
            # the model's control pieces, then the sentinels
            controls = _spm_extra_special_tokens(proto, kwargs)
            kwargs["extra_special_tokens"] = list(controls) + self._sentinels()
        vocab = [(p.piece, p.score) for p in proto.pieces]
        vocab += [(token, 0.0) for token in self._sentinels()[::-1]]
        return builders.spm_unigram(vocab, unk_id=2,
                                    charsmap=proto.normalizer_spec.precompiled_charsmap)

    def _make_backend(self, kwargs: dict[str, Any], vocab: Any, merges: Any,
                      charsmap: bytes | None) -> Tokenizer | None:
        if _configured_extra_tokens(kwargs) is None:
            kwargs["extra_special_tokens"] = self._sentinels()
        return builders.spm_unigram(vocab, unk_id=2, charsmap=charsmap)

    def _class_post_processor(self) -> Any:
        return processors.TemplateProcessing(
            single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
            special_tokens=[("</s>", self.eos_token_id)])

    def get_sentinel_tokens(self) -> list[str]:
        return [t for t in self.extra_special_tokens if "<extra_id_" in t]

    def get_sentinel_token_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.get_sentinel_tokens()]


def _configured_extra_tokens(kwargs: dict[str, Any]) -> list | None:
    """The configuration's extra special tokens (either name), under extra_special_tokens."""
    if kwargs.get("extra_special_tokens") is None and "additional_special_tokens" in kwargs:
        kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
    return kwargs.get("extra_special_tokens")


def _spm_extra_special_tokens(proto: Any, kwargs: dict[str, Any]) -> list:
    """SentencePiece control pieces become extra special tokens, unless configured."""
    extra = _configured_extra_tokens(kwargs)
    if extra is None:
        extra = [AddedToken(piece, normalized=False, special=special)
                 for _, piece, special in builders.spm_special_pieces(proto)]
        kwargs["extra_special_tokens"] = extra
    return extra


# transformers 4 names (transformers 5 keeps them as aliases too)
BertTokenizerFast = BertTokenizer
DistilBertTokenizerFast = DistilBertTokenizer
MPNetTokenizerFast = MPNetTokenizer
GPT2TokenizerFast = GPT2Tokenizer
RobertaTokenizerFast = RobertaTokenizer
LlamaTokenizerFast = LlamaTokenizer
T5TokenizerFast = T5Tokenizer

CLASSES: dict[str, type[PreTrainedTokenizerFast]] = {
    "PreTrainedTokenizerFast": PreTrainedTokenizerFast,
    "TokenizersBackend": PreTrainedTokenizerFast,
    "BertTokenizer": BertTokenizer,
    "DistilBertTokenizer": DistilBertTokenizer,
    "MPNetTokenizer": MPNetTokenizer,
    "GPT2Tokenizer": GPT2Tokenizer,
    "RobertaTokenizer": RobertaTokenizer,
    "LlamaTokenizer": LlamaTokenizer,
    "T5Tokenizer": T5Tokenizer,
    "MarianTokenizer": MarianTokenizer,
    # names transformers 5 resolves to the same classes
    "ElectraTokenizer": BertTokenizer,
    "MobileBertTokenizer": BertTokenizer,
    "SqueezeBertTokenizer": BertTokenizer,
    "BartTokenizer": RobertaTokenizer,
    "LongformerTokenizer": RobertaTokenizer,
}

# config.json model_type -> class, for repositories whose tokenizer_config names no class
MODEL_TYPES: dict[str, type[PreTrainedTokenizerFast]] = {
    "bert": BertTokenizer,
    "electra": BertTokenizer,
    "mobilebert": BertTokenizer,
    "squeezebert": BertTokenizer,
    "bart": RobertaTokenizer,
    "longformer": RobertaTokenizer,
    "distilbert": DistilBertTokenizer,
    "mpnet": MPNetTokenizer,
    "gpt2": GPT2Tokenizer,
    "roberta": RobertaTokenizer,
    "llama": LlamaTokenizer,
    "mistral": LlamaTokenizer,
    "t5": T5Tokenizer,
    "mt5": T5Tokenizer,
    "marian": MarianTokenizer,
}
