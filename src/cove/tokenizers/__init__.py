"""cove.tokenizers: transformers' tokenizer API on the `tokenizers` library.

    from cove.tokenizers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("alice/tiny-bert")      # or a local folder
    batch = tokenizer(["a text", "another"], padding=True, truncation=True, return_tensors="pt")
    text = tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    tokenizer.save_pretrained("./tiny-bert")                         # transformers loads it

Files, names, outputs and defaults follow transformers 5 (the `...Fast` names of transformers
4 are aliases). A tokenizer.json is loaded as it is; without one, the class builds the
pipeline from the model's vocabulary files (vocab.txt, vocab.json + merges.txt, a SentencePiece
.model; Marian's source.spm, target.spm and vocab.json). Chat templates run in a sandboxed
Jinja environment. Repository code never runs (`trust_remote_code=True` is refused).
"""

from tokenizers import AddedToken

from cove.tokenizers.auto import AutoTokenizer
from cove.tokenizers.base import (
    PaddingStrategy,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    TokenizersBackend,
    TruncationStrategy,
)
from cove.tokenizers.encoding import BatchEncoding, CharSpan, TokenSpan
from cove.tokenizers.models import (
    BertTokenizer,
    BertTokenizerFast,
    DistilBertTokenizer,
    DistilBertTokenizerFast,
    GPT2Tokenizer,
    GPT2TokenizerFast,
    LlamaTokenizer,
    LlamaTokenizerFast,
    MarianTokenizer,
    MPNetTokenizer,
    MPNetTokenizerFast,
    RobertaTokenizer,
    RobertaTokenizerFast,
    T5Tokenizer,
    T5TokenizerFast,
)

__all__ = [
    "AddedToken", "AutoTokenizer", "BatchEncoding", "BertTokenizer", "BertTokenizerFast",
    "CharSpan", "DistilBertTokenizer", "DistilBertTokenizerFast", "GPT2Tokenizer",
    "GPT2TokenizerFast", "LlamaTokenizer", "LlamaTokenizerFast", "MarianTokenizer",
    "MPNetTokenizer", "MPNetTokenizerFast", "PaddingStrategy", "PreTrainedTokenizerBase",
    "PreTrainedTokenizerFast", "RobertaTokenizer", "RobertaTokenizerFast", "T5Tokenizer", "T5TokenizerFast", "TokenSpan",
    "TokenizersBackend", "TruncationStrategy",
]
