"""Logits processors: small callables `(input_ids, scores) -> scores`, composable in a list.

Each takes the ids so far ([batch, length]) and the next-token scores ([batch, vocab], float32)
and returns new scores; none modifies its input in place. Names and arguments are
transformers'; `LogitsProcessorList` applies them in order.
"""

from __future__ import annotations

import math

import torch

NEG_INF = -math.inf


class LogitsProcessor:
    """The base: subclasses implement `__call__(input_ids, scores)`."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")


LogitsWarper = LogitsProcessor  # transformers' old name for the sampling-only processors


class LogitsProcessorList(list):
    """Processors applied one after the other."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor,
                 **kwargs) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores, **kwargs) if kwargs else processor(
                input_ids, scores)
        return scores


def _as_id_tensor(ids: int | list[int] | torch.Tensor, device=None) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        return ids.reshape(-1).to(device=device, dtype=torch.long)
    if isinstance(ids, int):
        ids = [ids]
    return torch.tensor(list(ids), dtype=torch.long, device=device)


def _token_mask(ids: torch.Tensor, vocab_size: int, device) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    ids = ids.to(device)
    mask[ids[(ids >= 0) & (ids < vocab_size)]] = True
    return mask


class TemperatureLogitsWarper(LogitsProcessor):
    """scores / temperature (below 1 sharpens the distribution, above 1 flattens it)."""

    def __init__(self, temperature: float) -> None:
        if not isinstance(temperature, float) or not temperature > 0:
            hint = (" For greedy decoding set `do_sample=False`."
                    if isinstance(temperature, (int, float)) and temperature == 0 else "")
            raise ValueError(f"`temperature` (={temperature}) has to be a strictly positive "
                             f"float, otherwise your next token scores will be invalid.{hint}")
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsWarper(LogitsProcessor):
    """Keep the `top_k` highest scores (ties with the k-th included); the rest get -inf."""

    def __init__(self, top_k: int, filter_value: float = NEG_INF,
                 min_tokens_to_keep: int = 1) -> None:
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"`top_k` has to be a strictly positive integer, but is {top_k}")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, self.filter_value)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability adds
    up to more than `top_p`."""

    def __init__(self, top_p: float, filter_value: float = NEG_INF,
                 min_tokens_to_keep: int = 1) -> None:
        top_p = float(top_p)
        if not 0 <= top_p <= 1.0:
            raise ValueError(f"`top_p` has to be a float > 0 and < 1, but is {top_p}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError("`min_tokens_to_keep` has to be a positive integer, but is "
                             f"{min_tokens_to_keep}")
        self.top_p = top_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        # Ascending order: the mass of the least likely tokens accumulates first; a token is
        # dropped while everything up to it stays within 1 - top_p.
        ascending, order = torch.sort(scores, dim=-1)
        mass_so_far = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = mass_so_far <= 1 - self.top_p
        drop_sorted[..., -self.min_tokens_to_keep:] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


class MinPLogitsWarper(LogitsProcessor):
    """Drop tokens whose probability is below `min_p` times the top token's probability."""

    def __init__(self, min_p: float, filter_value: float = NEG_INF,
                 min_tokens_to_keep: int = 1) -> None:
        if not 0 <= min_p <= 1.0:
            raise ValueError(f"`min_p` has to be a float in the [0, 1] interval, but is {min_p}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError("`min_tokens_to_keep` has to be a positive integer, but is "
                             f"{min_tokens_to_keep}")
        self.min_p = min_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        threshold = self.min_p * probs.amax(dim=-1, keepdim=True)
        drop = probs < threshold
        keep = torch.topk(probs, min(self.min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
        drop = drop.scatter(-1, keep, False)
        return scores.masked_fill(drop, self.filter_value)


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Tokens already in the sequence: positive scores divided by `penalty`, negative ones
    multiplied (each token at most once). `prompt_ignore_length` (an int, or one per row)
    leaves that many leading positions out, e.g. left padding."""

    def __init__(self, penalty: float,
                 prompt_ignore_length: int | torch.Tensor | None = None) -> None:
        if not isinstance(penalty, float) or not penalty > 0:
            raise ValueError(f"`penalty` has to be a strictly positive float, but is {penalty}")
        if isinstance(prompt_ignore_length, int) and prompt_ignore_length < 0:
            raise ValueError("`prompt_ignore_length` has to be a positive integer, but is "
                             f"{prompt_ignore_length}")
        if isinstance(prompt_ignore_length, torch.Tensor) and prompt_ignore_length.dim() != 1:
            raise ValueError("`prompt_ignore_length` must be 1D")
        self.penalty = penalty
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        if input_ids.dim() == 1:
            input_ids = input_ids[:, None]
        ignore = self.prompt_ignore_length
        if isinstance(ignore, int):
            input_ids = input_ids[:, ignore:]
        elif isinstance(ignore, torch.Tensor):
            if ignore.shape[0] != input_ids.shape[0]:
                raise ValueError("Incompatible `prompt_ignore_length` batch size")
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            skipped = positions[None, :] < ignore.to(input_ids.device)[:, None]
            input_ids = input_ids.masked_fill(skipped, vocab)
        # Ids beyond the scores' vocabulary (and the skipped ones) land in one extra column
        # that is dropped at the end.
        ids = input_ids.clamp(max=vocab)
        seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, ids, True)
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen[:, :vocab], penalised, scores)


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """No n-gram of `ngram_size` tokens occurs twice in a sequence: a token that would close
    an n-gram the row already holds gets -inf (the prompt counts too, as in transformers)."""

    def __init__(self, ngram_size: int) -> None:
        if not isinstance(ngram_size, int) or ngram_size <= 0:
            raise ValueError(f"`ngram_size` has to be a strictly positive integer, but is "
                             f"{ngram_size}")
        self.ngram_size = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        n = self.ngram_size
        length = input_ids.shape[-1]
        if length + 1 < n:
            return scores
        processed = scores.clone()
        for row, tokens in enumerate(input_ids.tolist()):
            prefix = tuple(tokens[length + 1 - n:]) if n > 1 else ()
            banned = {tokens[i + n - 1] for i in range(length - n + 1)
                      if tuple(tokens[i:i + n - 1]) == prefix}
            if banned:
                processed[row, sorted(banned)] = -float("inf")
        return processed


class NoBadWordsLogitsProcessor(LogitsProcessor):
    """Token sequences that are never generated: a one-token sequence is never chosen; a
    longer one's last token gets -inf when the row ends with the rest of it. A one-token
    sequence that is an end-of-sequence token is dropped (it would forbid ever stopping)."""

    def __init__(self, bad_words_ids: list[list[int]],
                 eos_token_id: int | list[int] | torch.Tensor | None = None) -> None:
        if not isinstance(bad_words_ids, (list, tuple)) or not bad_words_ids:
            raise ValueError(f"`bad_words_ids` has to be a non-empty list, but is "
                             f"{bad_words_ids!r:.80}.")
        for words in bad_words_ids:
            if not isinstance(words, (list, tuple)) or not words or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in words):
                raise ValueError("`bad_words_ids` has to be a list of non-empty lists of "
                                 f"non-negative token ids, but holds {words!r:.80}.")
        eos = set() if eos_token_id is None else set(_as_id_tensor(eos_token_id).tolist())
        sequences = [list(words) for words in bad_words_ids
                     if not (len(words) == 1 and words[0] in eos)]
        self.single = [words[0] for words in sequences if len(words) == 1]
        self.longer = [words for words in sequences if len(words) > 1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        outside = sorted({i for i in self.single + sum(self.longer, []) if i >= vocab})
        if outside:
            raise ValueError(f"bad_words_ids holds token ids outside the model's vocabulary of "
                             f"{vocab}: {outside}.")
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[:, self.single] = True
        if self.longer:
            rows = input_ids.tolist()
            for words in self.longer:
                prefix, last = words[:-1], words[-1]
                if len(prefix) > input_ids.shape[-1]:
                    continue
                for r, tokens in enumerate(rows):
                    if tokens[len(tokens) - len(prefix):] == prefix:
                        mask[r, last] = True
        return scores.masked_fill(mask, NEG_INF)


class MinLengthLogitsProcessor(LogitsProcessor):
    """No end-of-sequence token while the whole sequence is shorter than `min_length`."""

    def __init__(self, min_length: int, eos_token_id: int | list[int] | torch.Tensor,
                 device: str | torch.device = "cpu") -> None:
        if not isinstance(min_length, int) or min_length < 0:
            raise ValueError(f"`min_length` has to be a non-negative integer, but is {min_length}")
        self.min_length = min_length
        self.eos_token_id = _as_id_tensor(eos_token_id, device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] >= self.min_length:
            return scores  # (no copy: a decoding step would copy [rows, vocab] for nothing)
        mask = _token_mask(self.eos_token_id, scores.shape[-1], scores.device)
        return scores.masked_fill(mask, NEG_INF)


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """No end-of-sequence token before `min_new_tokens` tokens follow the prompt."""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int,
                 eos_token_id: int | list[int] | torch.Tensor,
                 device: str | torch.device = "cpu") -> None:
        for name, value in (("prompt_length_to_skip", prompt_length_to_skip),
                            ("min_new_tokens", min_new_tokens)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` has to be a positive integer, but is {value}")
        self.prompt_length_to_skip = prompt_length_to_skip
        self.min_new_tokens = min_new_tokens
        self.eos_token_id = _as_id_tensor(eos_token_id, device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] - self.prompt_length_to_skip >= self.min_new_tokens:
            return scores  # (no copy, as above)
        mask = _token_mask(self.eos_token_id, scores.shape[-1], scores.device)
        return scores.masked_fill(mask, NEG_INF)


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """The listed tokens are never generated."""

    def __init__(self, suppress_tokens: list[int], device: str | torch.device = "cpu") -> None:
        self.suppress_tokens = _as_id_tensor(list(suppress_tokens), device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        mask = _token_mask(self.suppress_tokens, scores.shape[-1], scores.device)
        return scores.masked_fill(mask, NEG_INF)


class SuppressTokensAtBeginLogitsProcessor(LogitsProcessor):
    """The listed tokens are not generated first (when the sequence is `begin_index` long)."""

    def __init__(self, begin_suppress_tokens: list[int], begin_index: int,
                 device: str | torch.device = "cpu") -> None:
        self.begin_suppress_tokens = _as_id_tensor(list(begin_suppress_tokens), device)
        self.begin_index = begin_index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] != self.begin_index:
            return scores
        mask = _token_mask(self.begin_suppress_tokens, scores.shape[-1], scores.device)
        return scores.masked_fill(mask, NEG_INF)


class ForcedBOSTokenLogitsProcessor(LogitsProcessor):
    """The first generated token (after a one-token start) is `bos_token_id`."""

    def __init__(self, bos_token_id: int) -> None:
        self.bos_token_id = bos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] != 1:
            return scores
        forced = torch.full_like(scores, NEG_INF)
        forced[:, self.bos_token_id] = 0
        return forced


class ForcedEOSTokenLogitsProcessor(LogitsProcessor):
    """The last token (when the sequence reaches `max_length`) is an end-of-sequence token."""

    def __init__(self, max_length: int, eos_token_id: int | list[int] | torch.Tensor,
                 device: str | torch.device = "cpu") -> None:
        self.max_length = max_length
        self.eos_token_id = _as_id_tensor(eos_token_id, device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] != self.max_length - 1:
            return scores
        mask = _token_mask(self.eos_token_id, scores.shape[-1], scores.device)
        return torch.where(mask, torch.zeros_like(scores), torch.full_like(scores, NEG_INF))


class InfNanRemoveLogitsProcessor(LogitsProcessor):
    """NaN scores become 0, infinite ones the largest finite value of their sign."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        finfo = torch.finfo(scores.dtype)
        return torch.nan_to_num(scores, nan=0.0, posinf=finfo.max, neginf=finfo.min)


class LogitNormalization(LogitsProcessor):
    """log_softmax of the scores (renormalize_logits=True; always the last processor)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.log_softmax(dim=-1)


# Functional forms, for use outside `generate`.
def apply_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    return TemperatureLogitsWarper(float(temperature))(None, scores)


def top_k_filter(scores: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    return TopKLogitsWarper(top_k, min_tokens_to_keep=min_tokens_to_keep)(None, scores)


def top_p_filter(scores: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    return TopPLogitsWarper(top_p, min_tokens_to_keep=min_tokens_to_keep)(None, scores)


def min_p_filter(scores: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    return MinPLogitsWarper(min_p, min_tokens_to_keep=min_tokens_to_keep)(None, scores)


def repetition_penalty(input_ids: torch.LongTensor, scores: torch.Tensor,
                       penalty: float) -> torch.Tensor:
    return RepetitionPenaltyLogitsProcessor(float(penalty))(input_ids, scores)
