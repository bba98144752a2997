"""Build a `tokenizers.Tokenizer` from a model's vocabulary files, as transformers' classes do.

- WordPiece from `vocab.txt` (BERT): BertNormalizer, BertPreTokenizer, WordPiece decoder.
- Byte-level BPE from `vocab.json` + `merges.txt` (GPT-2, RoBERTa): ByteLevel pre-tokenizer
  and decoder.
- SentencePiece `.model` files, read with the `sentencepiece` package's protobuf schema:
  BPE with byte fallback (Llama, Mistral) or Unigram (T5).
Post-processors (the special tokens around sequences) are set by the tokenizer classes, once
the special tokens and their ids are known.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

SPM_NORMAL, SPM_UNKNOWN, SPM_CONTROL, SPM_USER_DEFINED, SPM_UNUSED, SPM_BYTE = 1, 2, 3, 4, 5, 6
SPM_UNIGRAM, SPM_BPE = 1, 2


def wordpiece(vocab: str | Path | dict[str, int], *, unk_token: str, do_lower_case: bool = True,
              strip_accents: bool | None = None, tokenize_chinese_chars: bool = True) -> Tokenizer:
    """A BERT WordPiece tokenizer from `vocab.txt` (path) or a token -> id dict."""
    if not isinstance(vocab, dict):
        vocab = models.WordPiece.read_file(str(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token=str(unk_token)))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True,
                                                handle_chinese_chars=tokenize_chinese_chars,
                                                strip_accents=strip_accents,
                                                lowercase=do_lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def byte_level_bpe(vocab: str | Path | dict[str, int], merges: str | Path | list | None, *,
                   add_prefix_space: bool = False) -> Tokenizer:
    """A GPT-2 style byte-level BPE from `vocab.json` + `merges.txt` (paths) or in memory."""
    if not isinstance(vocab, dict) and isinstance(merges, (str, Path)):
        vocab, merges = models.BPE.read_file(str(vocab), str(merges))
    if not isinstance(vocab, dict):
        vocab = json.loads(Path(vocab).read_text(encoding="utf-8"))
    if isinstance(merges, (str, Path)):
        merges = _read_merges(Path(merges))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in (merges or [])]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                               continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    return tok


def _read_merges(path: Path) -> list[tuple[str, str]]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if i == 0 and line.startswith("#version"):
            continue
        if line.strip():
            left, right = line.split(" ", 1)
            out.append((left, right))
    return out


# --- SentencePiece ---------------------------------------------------------------------------

def load_spm(path: str | Path) -> Any:
    """Parse a SentencePiece `.model` file (a ModelProto) with the `sentencepiece` package."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:  # pragma: no cover - both are dependencies of cove
        raise ImportError("Reading a SentencePiece .model file needs the `sentencepiece` and "
                          "`protobuf` packages: pip install sentencepiece protobuf") from e
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    if not proto.pieces:
        raise ValueError(f"{path} is not a SentencePiece model (no pieces)")
    return proto


def spm_merges(pieces: list[str]) -> list[tuple[str, str]]:
    """BPE merges for SentencePiece pieces: every split of a piece into two pieces of the
    vocabulary, ranked by the merged piece's id, then by the length of the left part."""
    vocab = set(pieces)
    merges = []
    for piece in pieces:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    return merges


def spm_special_pieces(proto: Any) -> list[tuple[int, str, bool]]:
    """Control (special) and user-defined (not special) pieces: (id, piece, is_special)."""
    return [(i, p.piece, p.type == SPM_CONTROL) for i, p in enumerate(proto.pieces)
            if p.type in (SPM_CONTROL, SPM_USER_DEFINED)]


def metaspace_scheme(add_prefix_space: bool, legacy: bool) -> str:
    if not add_prefix_space:
        return "never"
    return "always" if legacy else "first"


def spm_bpe(vocab: dict[str, int], merges: list, *, add_prefix_space: bool = True,
            legacy: bool = False) -> Tokenizer:
    """Llama/Mistral: SentencePiece BPE with byte fallback, no normalizer, Metaspace."""
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True,
                               dropout=None))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme=metaspace_scheme(add_prefix_space, legacy), split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    return tok


def spm_faithful(proto: Any, *, legacy: bool = True) -> Tokenizer:
    """A SentencePiece model as SentencePiece itself runs it (no model class known): its
    normalizer spec, whitespace escaping, dummy prefix, score-ranked BPE merges, and
    user-defined pieces that are always emitted whole."""
    spec = proto.normalizer_spec
    byte_fallback = proto.trainer_spec.byte_fallback
    user_defined = [p.piece for p in proto.pieces if p.type == SPM_USER_DEFINED]
    if proto.trainer_spec.model_type == SPM_UNIGRAM:
        model = models.Unigram([(p.piece, p.score) for p in proto.pieces],
                               unk_id=proto.trainer_spec.unk_id, byte_fallback=byte_fallback)
    else:
        normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces)
                  if p.type == SPM_NORMAL}
        ranked = []
        for piece, (score, index) in normal.items():
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in normal and right in normal:
                    ranked.append((-score, index, left, right))
        model = models.BPE(vocab={p.piece: i for i, p in enumerate(proto.pieces)},
                           merges=[(left, right) for _, _, left, right in sorted(ranked)],
                           unk_token=proto.trainer_spec.unk_piece, fuse_unk=True,
                           byte_fallback=byte_fallback, dropout=None,
                           ignore_merges=bool(user_defined))
    tok = Tokenizer(model)
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # spaces only: SentencePiece keeps newlines and tabs
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
                  normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if spec.add_dummy_prefix and legacy:
        # Metaspace adds no prefix to a text that starts with "▁"; SentencePiece does.
        steps.append(normalizers.Replace(Regex(r"\A▁"), "▁▁"))
    tok.normalizer = normalizers.Sequence(steps)
    pre = []
    if spec.add_dummy_prefix:
        pre.append(pre_tokenizers.Metaspace(replacement="▁",
                                            prepend_scheme="always" if legacy else "first",
                                            split=False))
    if user_defined:
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        pre.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    if pre:
        tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    steps = [decoders.Replace("▁", " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    if spec.add_dummy_prefix:
        steps += [decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    elif byte_fallback:
        steps.append(decoders.Fuse())
    tok.decoder = decoders.Sequence(steps)
    return tok


def spm_unigram(vocab: list[tuple[str, float]], *, unk_id: int,
                charsmap: bytes | None = None) -> Tokenizer:
    """T5: SentencePiece Unigram, the model's precompiled normalizer, Metaspace."""
    tok = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    if charsmap:
        tok.normalizer = normalizers.Precompiled(charsmap)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tok
