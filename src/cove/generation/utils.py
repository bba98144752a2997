"""GenerationMixin: `generate` for causal language models and encoder-decoder models (T5,
BART, Marian: the encoder runs once, the decoder starts from decoder_start_token_id and its
cache keeps the cross-attention keys and values from the first step), with transformers'
semantics.

Strategies: greedy search, multinomial sampling (temperature, top-k, top-p, min-p), beam search
(and beam sampling), with repetition penalty, minimum lengths, several end-of-sequence tokens,
stop strings, several returned sequences per prompt and left-padded batches.

The model provides `forward(input_ids, attention_mask, position_ids, past_key_values,
use_cache, inputs_embeds, logits_to_keep, ...)` returning `.logits`, and
`new_cache(batch_size, max_length, dtype=None, device=None)`: one KV cache is allocated for the
prompt and every new token before decoding starts, and each step only appends to it.

Host synchronisation: one small read per step, and only when something other than the length
can end generation (end-of-sequence tokens, stop strings, a streamer, custom criteria).
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
import warnings
import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch.nn import functional as F

from cove.generation.configuration import GenerationConfig
from cove.generation.logits_process import (
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from cove.generation.stopping_criteria import StopStringCriteria
from cove.generation.threads import generation_threads

log = logging.getLogger("cove.generation")

# Fields of GenerationConfig that `generate` does not implement yet, with their neutral values:
# a call that sets one to anything else is refused rather than silently ignored.
_UNSUPPORTED: dict[str, tuple] = {
    "encoder_no_repeat_ngram_size": (None, 0),
    "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0), "top_h": (None,), "sequence_bias": (None,),
    "guidance_scale": (None, 1.0), "watermarking_config": (None,),
    "exponential_decay_length_penalty": (None,), "encoder_repetition_penalty": (None, 1.0),
    "token_healing": (None, False), "constraints": (None,), "force_words_ids": (None,),
    "num_beam_groups": (None, 1), "diversity_penalty": (None, 0.0), "penalty_alpha": (None, 0),
    "dola_layers": (None,), "prompt_lookup_num_tokens": (None,), "assistant_early_exit": (None,),
    "use_mtp": (None, False), "prefill_chunk_size": (None,), "low_memory": (None, False),
}
# Arguments of transformers' generate that Cove does not implement.
_UNSUPPORTED_ARGS = ("prefix_allowed_tokens_fn", "assistant_model", "negative_prompt_ids",
                     "negative_prompt_attention_mask", "custom_generate", "assistant_tokenizer",
                     "past_key_values", "cache")
_IGNORED_ARGS = ("synced_gpus", "trust_remote_code", "return_legacy_cache")

NEG_LARGE = -1.0e9


# -- outputs -----------------------------------------------------------------------------------
class ModelOutput(OrderedDict):
    """Like cove.models' outputs (not imported here: the models import this module): the
    fields that are set, as keys and attributes, also indexable by position."""

    def __init__(self, **fields: Any) -> None:
        super().__init__((k, v) for k, v in fields.items() if v is not None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


class GenerateDecoderOnlyOutput(ModelOutput):
    """sequences [batch * num_return_sequences, length]; scores (processed) and logits (raw):
    one [rows, vocab] tensor per step; attentions, hidden_states per step; past_key_values."""

    @property
    def cache(self) -> Any:  # transformers 5's name for the returned cache
        return self.get("past_key_values")


class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """sequences, sequences_scores (length-penalised), scores (processed log-probabilities per
    step, [batch * num_beams, vocab]), logits, beam_indices, attentions, hidden_states."""

    @property
    def cache(self) -> Any:
        return self.get("past_key_values")


class GenerateEncoderDecoderOutput(ModelOutput):
    """sequences (the decoder's, from its start token), scores, logits, encoder_attentions,
    encoder_hidden_states, decoder_attentions, cross_attentions, decoder_hidden_states (one
    entry per step), past_key_values."""

    @property
    def cache(self) -> Any:
        return self.get("past_key_values")


class GenerateBeamEncoderDecoderOutput(GenerateEncoderDecoderOutput):
    """GenerateEncoderDecoderOutput's fields, with sequences_scores and beam_indices."""


def _encoder_decoder_output(result: ModelOutput, encoder_outputs: Any, runner: Any,
                            config: GenerationConfig) -> ModelOutput:
    if isinstance(encoder_outputs, (tuple, list)):
        encoder_outputs = dict(zip(("last_hidden_state", "hidden_states", "attentions"),
                                   encoder_outputs, strict=False))
    beam = isinstance(result, GenerateBeamDecoderOnlyOutput)
    kind = GenerateBeamEncoderDecoderOutput if beam else GenerateEncoderDecoderOutput
    fields = {k: v for k, v in result.items() if k not in ("attentions", "hidden_states")}
    return kind(**fields,
                encoder_attentions=encoder_outputs.get("attentions")
                if config.output_attentions else None,
                encoder_hidden_states=encoder_outputs.get("hidden_states")
                if config.output_hidden_states else None,
                decoder_attentions=result.get("attentions"),
                cross_attentions=tuple(runner.cross_attentions)
                if config.output_attentions else None,
                decoder_hidden_states=result.get("hidden_states"))


GenerateOutput = (GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput
                  | GenerateEncoderDecoderOutput | GenerateBeamEncoderDecoderOutput)
# transformers' older names
GreedySearchDecoderOnlyOutput = SampleDecoderOnlyOutput = GenerateDecoderOnlyOutput
BeamSearchDecoderOnlyOutput = BeamSampleDecoderOnlyOutput = GenerateBeamDecoderOnlyOutput
GreedySearchEncoderDecoderOutput = SampleEncoderDecoderOutput = GenerateEncoderDecoderOutput
BeamSearchEncoderDecoderOutput = BeamSampleEncoderDecoderOutput = \
    GenerateBeamEncoderDecoderOutput


# -- helpers -----------------------------------------------------------------------------------
def _token_list(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.reshape(-1).tolist()
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _merge(defaults: list, custom: list | None, kind: type) -> list:
    """transformers' rule: a custom entry replaces a default of the same type; the other
    custom entries come after the defaults."""
    if not custom:
        return kind(defaults)
    merged = kind()
    for default in defaults:
        same = next((c for c in custom if type(c) is type(default)), None)
        if same is not None:
            log.warning("A custom %s was passed to generate() that generate() also builds from "
                        "its arguments; the custom one takes precedence.", type(same).__name__)
        merged.append(same if same is not None else default)
    for c in custom:
        if not any(c is m for m in merged):
            merged.append(c)
    return merged


def _gather_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [batch, beams, ...], index [batch, k] -> [batch, k, ...]."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


class _Stopper:
    """Everything that can end a row: length, end-of-sequence tokens, stop strings, time and
    the caller's own criteria. Returns which rows are done, on the device."""

    def __init__(self, max_length: int, eos: torch.Tensor | None,
                 stop_strings: StopStringCriteria | None, max_time: float | None,
                 custom: list | None) -> None:
        self.max_length = max_length
        self.eos = eos
        self.stop_strings = stop_strings
        self.deadline = None if max_time is None else time.time() + max_time
        self.custom = list(custom or [])

    @property
    def early(self) -> bool:
        """Whether anything besides the length can end a row (else no check is needed)."""
        return bool(self.eos is not None or self.stop_strings or self.deadline or self.custom)

    def __call__(self, seqs: torch.Tensor, scores: Any,
                 host_tail: list[list[int]] | None = None) -> torch.Tensor:
        rows, length = seqs.shape
        if length >= self.max_length or (self.deadline is not None
                                          and time.time() > self.deadline):
            return torch.ones(rows, dtype=torch.bool, device=seqs.device)
        done = torch.zeros(rows, dtype=torch.bool, device=seqs.device)
        if self.eos is not None:
            done |= torch.isin(seqs[:, -1], self.eos)
        if self.stop_strings is not None:
            if host_tail is None:
                host_tail = seqs[:, -self.stop_strings.window:].tolist()
            hits = self.stop_strings.match_rows(host_tail)
            if any(hits):
                done |= torch.tensor(hits, dtype=torch.bool).to(seqs.device, non_blocking=True)
        if self.custom:
            scores = tuple(scores) if scores is not None else None
            for criterion in self.custom:
                done |= criterion(seqs, scores).to(seqs.device)
        return done


class _Runner:
    """Feeds the model: the prompt once, then one token per step, into a preallocated cache.

    Positions follow the attention mask (left padding: the first real token is position 0),
    as transformers' generate computes them."""

    def __init__(self, model: Any, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None,
                 attention_mask: torch.Tensor, position_ids: torch.Tensor | None,
                 max_new: int, use_cache: bool, forward_kwargs: dict[str, Any]) -> None:
        self.model = model
        self.inputs_embeds = inputs_embeds
        self.input_ids = input_ids
        rows = attention_mask.shape[0]
        self.prompt_len = attention_mask.shape[1]  # positions the model sees for the prompt
        total = self.prompt_len + max_new
        device = attention_mask.device
        if position_ids is None:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids = position_ids.masked_fill(attention_mask == 0, 0)
        last = position_ids[:, -1:]
        steps = torch.arange(1, max_new + 1, device=device, dtype=last.dtype)[None, :]
        self.positions = torch.cat([position_ids, last + steps], dim=1)
        # An all-ones mask is left out: the model then uses its plain causal path.
        if bool(attention_mask.all()):
            self.mask = None
        else:
            self.mask = torch.cat([attention_mask.long(), torch.ones(
                rows, max_new, dtype=torch.long, device=device)], dim=1)
        params = _forward_parameters(type(model))
        self.kwargs = {k: v for k, v in forward_kwargs.items() if k in params or _ANY in params}
        if "logits_to_keep" in params:
            self.kwargs["logits_to_keep"] = 1
        self.takes_positions = "position_ids" in params
        self.length = 0  # positions fed so far
        self.cache = self.fast = None
        if use_cache:
            # A model may run its one-token steps its own faster way (Llama's kernel steps),
            # over a cache of its own that the prompt's forward fills.
            fast = getattr(model, "fast_decoder", None)
            self.fast = fast(self.positions, self.kwargs) if fast is not None else None
            self.cache = self.fast.cache if self.fast is not None \
                else model.new_cache(rows, total, device=device)

    def _call(self, ids: torch.Tensor | None, embeds: torch.Tensor | None, start: int,
              end: int) -> Any:
        kwargs = dict(self.kwargs)
        if self.takes_positions:
            kwargs["position_ids"] = self.positions[:, start:end]
        out = self.model(input_ids=ids, inputs_embeds=embeds,
                         attention_mask=None if self.mask is None else self.mask[:, :end],
                         past_key_values=self.cache, use_cache=self.cache is not None,
                         return_dict=True, **kwargs)
        self.length = end
        return out

    def prefill(self) -> Any:
        if self.inputs_embeds is not None:
            return self._call(None, self.inputs_embeds, 0, self.prompt_len)
        return self._call(self.input_ids, None, 0, self.prompt_len)

    def step(self, seqs: torch.Tensor) -> Any:
        """Feed the newest token of each row (seqs: every id so far, [rows, length])."""
        end = self.length + 1
        if self.fast is not None:
            self.length = end
            return self.fast.step(seqs[:, -1], self.positions[:, end - 1], self.mask)
        if self.cache is not None:
            return self._call(seqs[:, -1:], None, end - 1, end)
        return self._call(seqs, None, 0, end)  # no cache: the whole sequence again

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)


class _Seq2SeqRunner:
    """Feeds an encoder-decoder model: the encoder ran once (its output is reused by every
    step), the decoder gets its start tokens, then one token per step into a preallocated
    cache that also keeps each layer's cross-attention keys and values from the first step.
    The encoder's output has one row per prompt: a prompt's beams (or returned sequences),
    consecutive decoder rows, share it and attend to it together."""

    def __init__(self, model: Any, decoder_input_ids: torch.Tensor,
                 encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor | None, max_new: int,
                 use_cache: bool, forward_kwargs: dict[str, Any]) -> None:
        self.model = model
        self.input_ids = decoder_input_ids
        self.encoder_outputs = (encoder_hidden,)
        self.encoder_mask = encoder_mask
        rows, self.prompt_len = decoder_input_ids.shape
        self.cache = None
        if use_cache:
            self.cache = model.new_cache(rows, self.prompt_len + max_new,
                                         device=decoder_input_ids.device)
        params = _forward_parameters(type(model))
        self.kwargs = {k: v for k, v in forward_kwargs.items() if k in params or _ANY in params}
        self.length = 0
        self.cross_attentions: list[Any] = []

    def _call(self, ids: torch.Tensor, end: int) -> Any:
        out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.encoder_mask,
                         decoder_input_ids=ids, past_key_values=self.cache,
                         use_cache=self.cache is not None, return_dict=True, **self.kwargs)
        self.length = end
        # the decoding loops read a step's attentions and hidden states under these names
        if out.get("decoder_attentions") is not None:
            out["attentions"] = out["decoder_attentions"]
            self.cross_attentions.append(out.get("cross_attentions"))
        if out.get("decoder_hidden_states") is not None:
            out["hidden_states"] = out["decoder_hidden_states"]
        return out

    def prefill(self) -> Any:
        return self._call(self.input_ids, self.prompt_len)

    def step(self, seqs: torch.Tensor) -> Any:
        end = self.length + 1
        if self.cache is not None:
            return self._call(seqs[:, -1:], end)
        return self._call(seqs, end)

    def reorder(self, index: torch.Tensor) -> None:
        # Beams only move among the rows of their own prompt, which share one row of the
        # encoder's output and so its cross-attention keys and values: only self-attention
        # moves.
        if self.cache is not None:
            self.cache.self_attention_cache.reorder(index)


_PARAMS: dict[type, frozenset] = {}
_ANY = "**"  # marks a forward that takes **kwargs


def _forward_parameters(cls: type) -> frozenset:
    if cls not in _PARAMS:
        params = inspect.signature(cls.forward).parameters
        names = set(params)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            names.add(_ANY)
        _PARAMS[cls] = frozenset(names)
    return _PARAMS[cls]


# -- the mixin ---------------------------------------------------------------------------------
class GenerationMixin:
    """Adds `generate` (and `generation_config`, `compute_transition_scores`) to a causal LM.

    Put it before the model's base class (`class XForCausalLM(GenerationMixin, XPreTrained)`)
    so that `from_pretrained` also reads generation_config.json and `save_pretrained` writes
    it; after the base class, `generation_config` comes from the model config alone.
    """

    generation_config_class = GenerationConfig

    # -- the model's default generation parameters -------------------------------------------
    @property
    def generation_config(self) -> GenerationConfig:
        found = self.__dict__.get("_generation_config")
        if found is None:
            found = self.generation_config_class.from_model_config(self.config)
            self.__dict__["_generation_config"] = found
        return found

    @generation_config.setter
    def generation_config(self, value: GenerationConfig | None) -> None:
        self.__dict__["_generation_config"] = value

    @classmethod
    def can_generate(cls) -> bool:
        return True

    @classmethod
    def from_pretrained(cls, name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        from cove.hub import EntryNotFoundError
        from cove.models.configuration import HUB_KWARGS

        generation_config = kwargs.pop("generation_config", None)
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        loaded = super().from_pretrained(name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if generation_config is None:
            try:
                generation_config = cls.generation_config_class.from_pretrained(
                    name_or_path, **hub)
            except (OSError, EntryNotFoundError):
                generation_config = None  # built from the model config when first used
        model.generation_config = generation_config
        return loaded

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().save_pretrained(save_directory, *args, **kwargs)
        self.generation_config.save_pretrained(save_directory)
        return result

    # -- generate ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None,
                 logits_processor: list | None = None, stopping_criteria: list | None = None,
                 *, attention_mask: torch.Tensor | None = None, streamer: Any = None,
                 tokenizer: Any = None, inputs: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, **kwargs: Any) -> Any:
        """Generate token ids after `input_ids` ([batch, length], left-padded with
        `attention_mask` for batches of different lengths).

        Any GenerationConfig field can be passed as a keyword (max_new_tokens, do_sample,
        temperature, top_k, top_p, min_p, repetition_penalty, num_beams, length_penalty,
        early_stopping, num_return_sequences, eos_token_id, stop_strings (needs `tokenizer`),
        return_dict_in_generate, output_scores, output_logits, ...); it overrides
        `generation_config`, which defaults to the model's `generation_config`.
        `generator` (a torch.Generator) makes sampling reproducible without touching the
        global seed. Returns the sequences (prompt included), or an output object with
        `.sequences`, `.scores`, `.logits` when return_dict_in_generate=True.
        """
        if inputs is not None:
            if input_ids is not None:
                raise ValueError("Pass either `inputs` or `input_ids` to generate(), not both.")
            input_ids = inputs
        for name in _UNSUPPORTED_ARGS:
            if kwargs.get(name) is not None:
                raise NotImplementedError(f"Cove's generate() does not support `{name}` yet.")
            kwargs.pop(name, None)
        for name in _IGNORED_ARGS:
            kwargs.pop(name, None)

        # 1. The parameters: the call's, then generation_config's, then the model's, then
        # the global defaults.
        has_default_max_length = (
            kwargs.get("max_length") is None
            and (generation_config is None or generation_config.max_length is None)
            and self.generation_config.max_length is None)
        config = copy.deepcopy(generation_config) if generation_config is not None \
            else GenerationConfig()
        config.update(**self.generation_config.to_dict(), defaults_only=True,
                      allow_custom_entries=True)
        config.update(**GenerationConfig.global_defaults(), defaults_only=True)
        model_kwargs = config.update(**kwargs)
        for name, neutral in _UNSUPPORTED.items():
            if getattr(config, name, None) not in neutral:
                raise NotImplementedError(
                    f"Cove's generate() does not support `{name}` yet "
                    f"(got {getattr(config, name)!r}).")

        inputs_embeds = model_kwargs.pop("inputs_embeds", None)
        position_ids = model_kwargs.pop("position_ids", None)
        model_kwargs.pop("use_cache", None)
        model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
        accepted = _forward_parameters(type(self))
        unknown = [] if _ANY in accepted else [k for k in model_kwargs if k not in accepted]
        if unknown:
            raise ValueError(f"The following `model_kwargs` are not used by the model: "
                             f"{unknown} (note: typos in the generate arguments will also "
                             "show up in this list)")

        device = self.device
        # 2. Special tokens.
        eos = _token_list(config.eos_token_id)
        pad = config.pad_token_id
        if isinstance(pad, torch.Tensor):
            pad = int(pad)
        if pad is None and eos:
            if attention_mask is None and input_ids is not None and input_ids.shape[0] > 1:
                log.warning("The attention mask and the pad token id were not set, with a "
                            "batched input. Pass `attention_mask` for reliable results.")
            pad = eos[0]

        # 2b. Encoder-decoder models: the encoder runs once, here; the decoder's prompt is
        # decoder_input_ids, else decoder_start_token_id.
        seq2seq = bool(getattr(self.config, "is_encoder_decoder", False))
        encoder_hidden = encoder_mask = None
        if seq2seq:
            decoder_input_ids = model_kwargs.pop("decoder_input_ids", None)
            encoder_outputs = model_kwargs.pop("encoder_outputs", None)
            model_kwargs.pop("decoder_attention_mask", None)
            encoder_outputs, encoder_hidden, encoder_mask, rows = self._encode_for_generation(
                input_ids, inputs_embeds, attention_mask, encoder_outputs, device, config)
            if decoder_input_ids is None:
                start = config.decoder_start_token_id
                if start is None:
                    start = config.bos_token_id
                if isinstance(start, (list, tuple)):
                    start = start[0]
                if start is None:
                    raise ValueError("`decoder_start_token_id` or `bos_token_id` has to be "
                                     "defined for encoder-decoder generation.")
                decoder_input_ids = torch.full((rows, 1), int(start), dtype=torch.long,
                                               device=device)
            input_ids, inputs_embeds = decoder_input_ids.to(device), None
            attention_mask = torch.ones_like(input_ids)  # the decoder's: nothing is padded

        # 3. The prompt.
        if input_ids is None and inputs_embeds is None:
            if config.bos_token_id is None:
                raise ValueError("`bos_token_id` has to be defined when no `input_ids` are "
                                 "provided.")
            rows = attention_mask.shape[0] if attention_mask is not None else 1
            input_ids = torch.full((rows, 1), int(config.bos_token_id), dtype=torch.long)
        if inputs_embeds is not None:
            inputs_embeds = inputs_embeds.to(device)
            if input_ids is None:
                input_ids = torch.zeros((inputs_embeds.shape[0], 0), dtype=torch.long)
        input_ids = input_ids.to(device)
        batch_size = input_ids.shape[0]
        prompt_positions = inputs_embeds.shape[1] if inputs_embeds is not None \
            else input_ids.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, prompt_positions, dtype=torch.long,
                                        device=device)
            if inputs_embeds is None and pad is not None and (eos is None or pad not in eos) \
                    and bool((input_ids == pad).any()):
                attention_mask = input_ids.ne(pad).long()
        else:
            attention_mask = attention_mask.to(device)
            if attention_mask.dim() != 2:
                raise ValueError("`attention_mask` passed to `generate` must be 2D.")
        if batch_size > 1 and pad is not None and bool((attention_mask[:, -1] == 0).any()):
            log.warning("A decoder-only architecture is being used, but right-padding was "
                        "detected! For correct generation results, please set "
                        "`padding_side='left'` when initializing the tokenizer.")
        if position_ids is not None:
            position_ids = position_ids.to(device)

        # 4. One row per returned sequence (or per beam).
        num_beams = int(config.num_beams or 1)
        expand = max(num_beams, int(config.num_return_sequences or 1))
        if expand > 1:
            input_ids = input_ids.repeat_interleave(expand, dim=0)
            attention_mask = attention_mask.repeat_interleave(expand, dim=0)
            if inputs_embeds is not None:
                inputs_embeds = inputs_embeds.repeat_interleave(expand, dim=0)
            if position_ids is not None:
                position_ids = position_ids.repeat_interleave(expand, dim=0)
            # (an encoder-decoder model's encoder output is not repeated: a prompt's rows
            # share it, and its cross-attention keys and values, in the decoder)
        if streamer is not None:
            if num_beams > 1:
                raise ValueError("`streamer` cannot be used with beam search (yet!). Make sure "
                                 "that `num_beams` is set to 1.")
            streamer.put(input_ids.cpu())

        # 5. Lengths.
        input_len = input_ids.shape[1]
        uses_embeds_only = inputs_embeds is not None and input_len != prompt_positions
        if config.max_new_tokens is not None:
            if not has_default_max_length and config.max_length is not None:
                log.warning("Both `max_new_tokens` (=%s) and `max_length` (=%s) seem to have "
                            "been set. `max_new_tokens` will take precedence.",
                            config.max_new_tokens, config.max_length)
            config.max_length = config.max_new_tokens + input_len
        elif uses_embeds_only and not has_default_max_length:
            config.max_length -= prompt_positions
        elif has_default_max_length:
            config.max_length = config.max_length + input_len
            limit = getattr(self.config, "max_position_embeddings", None)
            if isinstance(limit, int):
                config.max_length = min(config.max_length, limit)
        if config.min_new_tokens is not None:
            config.min_length = config.min_new_tokens + input_len
        elif uses_embeds_only:
            config.min_length = max(config.min_length - prompt_positions, 0)
        if has_default_max_length and config.max_new_tokens is None:
            warnings.warn(
                f"Using the model-agnostic default `max_length` (={config.max_length}) to "
                "control the generation length. We recommend setting `max_new_tokens` to "
                "control the maximum length of the generation.", UserWarning, stacklevel=2)
        if input_len >= config.max_length:
            raise ValueError(
                f"Input length of input_ids is {input_len}, but `max_length` is set to "
                f"{config.max_length}. This can lead to unexpected behavior. You should "
                "consider increasing `max_length` or, better yet, setting `max_new_tokens`.")
        max_new = config.max_length - input_len
        use_cache = bool(config.use_cache) or inputs_embeds is not None
        if use_cache and not hasattr(self, "new_cache"):
            use_cache = False

        # 6. Processors and stopping criteria.
        eos_tensor = None if not eos else torch.tensor(eos, dtype=torch.long, device=device)
        processors = self._logits_processors(config, input_len, attention_mask, eos,
                                             logits_processor, device)
        stop_strings = None
        if config.stop_strings is not None:
            if tokenizer is None:
                raise ValueError(
                    "There are one or more stop strings, either in the arguments to `generate` "
                    "or in the model's generation config, but we could not locate a tokenizer. "
                    "When generating with stop strings, you must pass the model's tokenizer to "
                    "the `tokenizer` argument of `generate`.")
            stop_strings = _stop_string_criteria(tokenizer, config.stop_strings)
        custom = [c for c in (stopping_criteria or [])]
        stopper = _Stopper(config.max_length, eos_tensor, stop_strings, config.max_time, custom)

        forward_kwargs = {**model_kwargs}
        if config.output_attentions:
            forward_kwargs["output_attentions"] = True
        if config.output_hidden_states:
            forward_kwargs["output_hidden_states"] = True
        if seq2seq:
            runner = _Seq2SeqRunner(self, input_ids, encoder_hidden, encoder_mask, max_new,
                                    use_cache, forward_kwargs)
        else:
            runner = _Runner(self, input_ids, inputs_embeds, attention_mask, position_ids,
                             max_new, use_cache, forward_kwargs)
        # 7. The steps, with the threads the free cores allow (cove.generation.threads).
        with generation_threads(device):
            if num_beams > 1:
                result = self._beam_search(runner, input_ids, config, processors, stopper,
                                           eos, pad, generator)
            else:
                result = self._sample(runner, input_ids, config, processors, stopper, pad,
                                      eos_tensor is not None, streamer, generator)
        if seq2seq and isinstance(result, ModelOutput):
            result = _encoder_decoder_output(result, encoder_outputs, runner, config)
        return result

    # -- pieces of generate ------------------------------------------------------------------
    def _encode_for_generation(self, input_ids: torch.Tensor | None,
                               inputs_embeds: torch.Tensor | None,
                               attention_mask: torch.Tensor | None, encoder_outputs: Any,
                               device: torch.device, config: GenerationConfig
                               ) -> tuple[Any, torch.Tensor, torch.Tensor | None, int]:
        """The encoder's output (run once, or `encoder_outputs` as given), its last hidden
        state, its attention mask and the number of rows. As transformers 5.x, no mask is inferred from
        pad tokens for an encoder-decoder model: pass the tokenizer's attention_mask."""
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        if encoder_outputs is None:
            if input_ids is None and inputs_embeds is None:
                raise ValueError("Encoder-decoder generation needs `input_ids` (or "
                                 "`inputs_embeds`, or `encoder_outputs`).")
            encoder_outputs = self.get_encoder()(
                input_ids=None if input_ids is None else input_ids.to(device),
                attention_mask=attention_mask,
                inputs_embeds=None if inputs_embeds is None else inputs_embeds.to(device),
                output_attentions=bool(config.output_attentions),
                output_hidden_states=bool(config.output_hidden_states))
        hidden = encoder_outputs[0] if isinstance(encoder_outputs, (tuple, list)) \
            else encoder_outputs["last_hidden_state"]
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        return encoder_outputs, hidden, attention_mask, hidden.shape[0]

    def _logits_processors(self, config: GenerationConfig, input_len: int,
                           attention_mask: torch.Tensor, eos: list[int] | None,
                           custom: list | None, device: torch.device) -> LogitsProcessorList:
        """Built in transformers' order: penalties and constraints, the caller's processors,
        then (sampling only) temperature, top-k, top-p, min-p."""
        chain: list = []
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            padding = None
            if not bool(attention_mask.all()):
                padding = (attention_mask != 0).int().argmax(dim=1)
            chain.append(RepetitionPenaltyLogitsProcessor(float(config.repetition_penalty),
                                                          prompt_ignore_length=padding))
        if config.no_repeat_ngram_size is not None and config.no_repeat_ngram_size > 0:
            chain.append(NoRepeatNGramLogitsProcessor(int(config.no_repeat_ngram_size)))
        if config.bad_words_ids is not None:
            chain.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos))
        if config.min_length is not None and eos and config.min_length > 0:
            chain.append(MinLengthLogitsProcessor(config.min_length, eos, device=device))
        if config.min_new_tokens is not None and eos and config.min_new_tokens > 0:
            chain.append(MinNewTokensLengthLogitsProcessor(input_len, config.min_new_tokens, eos,
                                                           device=device))
        if config.forced_bos_token_id is not None:
            chain.append(ForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
        if config.forced_eos_token_id is not None:
            chain.append(ForcedEOSTokenLogitsProcessor(config.max_length,
                                                       config.forced_eos_token_id, device))
        if config.remove_invalid_values is True:
            chain.append(InfNanRemoveLogitsProcessor())
        if config.suppress_tokens is not None:
            chain.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device))
        if config.begin_suppress_tokens is not None:
            begin = input_len if (input_len > 1 or config.forced_bos_token_id is None) \
                else input_len + 1
            chain.append(SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens,
                                                              begin, device))
        processors = _merge(chain, list(custom or []), LogitsProcessorList)
        if config.do_sample:
            keep = 1
            if config.num_beams is not None and config.num_beams > 1:
                keep = (len(eos) if eos else 1) + 1
            if config.temperature is not None and config.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(float(config.temperature)))
            if config.top_k is not None and config.top_k != 0:
                processors.append(TopKLogitsWarper(int(config.top_k), min_tokens_to_keep=keep))
            if config.top_p is not None and config.top_p < 1.0:
                processors.append(TopPLogitsWarper(config.top_p, min_tokens_to_keep=keep))
            if config.min_p is not None:
                processors.append(MinPLogitsWarper(config.min_p, min_tokens_to_keep=keep))
        if config.renormalize_logits is True:
            processors.append(LogitNormalization())
        return processors

    def _sample(self, runner: _Runner, input_ids: torch.Tensor, config: GenerationConfig,
                processors: LogitsProcessorList, stopper: _Stopper, pad: int | None,
                pad_finished: bool, streamer: Any, generator: torch.Generator | None) -> Any:
        """Greedy search (do_sample=False) or multinomial sampling, one token per step."""
        rows, start = input_ids.shape
        device = input_ids.device
        want = bool(config.return_dict_in_generate)
        scores = [] if want and config.output_scores else None
        raw = [] if want and config.output_logits else None
        attentions = [] if want and config.output_attentions else None
        hidden = [] if want and config.output_hidden_states else None
        seqs = torch.empty(rows, config.max_length, dtype=torch.long, device=device)
        seqs[:, :start] = input_ids
        length = start
        unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        pad_tensor = torch.tensor(pad if pad is not None else 0, device=device)
        need_host = streamer is not None or stopper.stop_strings is not None
        tail = max(1, stopper.stop_strings.window if stopper.stop_strings else 1)
        out = runner.prefill()
        while True:
            logits = out.logits[:, -1, :].to(dtype=torch.float32, copy=True)
            next_scores = processors(seqs[:, :length], logits)
            if scores is not None:
                scores.append(next_scores)
            if raw is not None:
                raw.append(logits)
            if attentions is not None:
                attentions.append(out.get("attentions"))
            if hidden is not None:
                hidden.append(out.get("hidden_states"))
            if config.do_sample:
                probs = F.softmax(next_scores, dim=-1)
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                tokens = torch.argmax(next_scores, dim=-1)
            if pad_finished:
                tokens = torch.where(unfinished, tokens, pad_tensor)
            seqs[:, length] = tokens
            length += 1
            host_tail = seqs[:, max(0, length - tail):length].tolist() if need_host else None
            if streamer is not None:
                streamer.put(torch.tensor([row[-1] for row in host_tail]))
            if length >= config.max_length:
                break
            unfinished &= ~stopper(seqs[:, :length], scores, host_tail)
            if stopper.early and not bool(unfinished.any()):
                break
            out = runner.step(seqs[:, :length])
        if streamer is not None:
            streamer.end()
        sequences = seqs[:, :length]
        if not want:
            return sequences
        return GenerateDecoderOnlyOutput(
            sequences=sequences, scores=None if scores is None else tuple(scores),
            logits=None if raw is None else tuple(raw),
            attentions=None if attentions is None else tuple(attentions),
            hidden_states=None if hidden is None else tuple(hidden),
            past_key_values=runner.cache)

    def _beam_search(self, runner: _Runner, input_ids: torch.Tensor, config: GenerationConfig,
                     processors: LogitsProcessorList, stopper: _Stopper, eos: list[int] | None,
                     pad: int | None, generator: torch.Generator | None) -> Any:
        """Beam search (beam sampling with do_sample=True), vectorised over the batch.

        Each step keeps, per prompt, the best `num_beams` unfinished hypotheses and the best
        `num_beams` finished ones (scored by log-probability / generated length **
        length_penalty). Candidates are the top (1 + number of eos tokens, at least 2) *
        num_beams continuations, so enough of them stay open when some end.
        """
        num_beams = int(config.num_beams)
        rows, prompt_len = input_ids.shape
        batch = rows // num_beams
        device = input_ids.device
        max_length = config.max_length
        length_penalty = float(config.length_penalty)
        early_stopping = config.early_stopping
        width = max(2, 1 + (len(eos) if eos else 0)) * num_beams
        top_slots = torch.arange(width, device=device) < num_beams
        if eos is None:
            fill = -1
        else:
            fill = pad if pad else eos[0]
        want = bool(config.return_dict_in_generate)
        all_scores = [] if want and config.output_scores else None
        raw = [] if want and config.output_logits else None
        attentions = [] if want and config.output_attentions else None
        hidden = [] if want and config.output_hidden_states else None

        running = torch.full((batch, num_beams, max_length), fill, dtype=torch.long,
                             device=device)
        running[:, :, :prompt_len] = input_ids.view(batch, num_beams, prompt_len)
        finished = running.clone()
        running_scores = torch.zeros(batch, num_beams, dtype=torch.float32, device=device)
        running_scores[:, 1:] = NEG_LARGE
        finished_scores = torch.full((batch, num_beams), NEG_LARGE, dtype=torch.float32,
                                     device=device)
        is_finished = torch.zeros(batch, num_beams, dtype=torch.bool, device=device)
        improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
        running_origin = torch.full((batch, num_beams, max_length - prompt_len), -1,
                                    dtype=torch.int32, device=device)
        finished_origin = running_origin.clone()
        batch_offset = torch.arange(batch, device=device).view(-1, 1) * num_beams
        length = prompt_len
        out = runner.prefill()
        while True:
            # (log_softmax writes a tensor of its own: float32 logits are not copied first, a
            # [rows, vocab] copy per step for nothing)
            logits = out.logits[:, -1, :].float()
            log_probs = F.log_softmax(logits, dim=-1)
            flat = running[:, :, :length].reshape(rows, length)
            log_probs = processors(flat, log_probs)
            if raw is not None:
                raw.append(logits.clone())
            if all_scores is not None:
                all_scores.append(log_probs.clone())
            if attentions is not None:
                attentions.append(out.get("attentions"))
            if hidden is not None:
                hidden.append(out.get("hidden_states"))
            del out
            vocab = log_probs.shape[-1]
            totals = (log_probs.view(batch, num_beams, vocab)
                      + running_scores[:, :, None]).reshape(batch, num_beams * vocab)

            # The best `width` continuations of every prompt.
            if config.do_sample:
                picked = torch.multinomial(F.softmax(totals, dim=-1), num_samples=width,
                                           generator=generator)
                cand_scores = torch.gather(totals, 1, picked)
                cand_scores, order = cand_scores.sort(dim=-1, descending=True)
                picked = picked.gather(-1, order)
            else:
                cand_scores, picked = torch.topk(totals, k=width)
            source = picked // vocab
            cand = _gather_beams(running, source)
            cand[:, :, length] = picked % vocab
            cand_origin = _gather_beams(running_origin, source)
            cand_origin[:, :, length - prompt_len] = (source + batch_offset).to(torch.int32)

            cand_flat = cand[:, :, :length + 1].reshape(batch * width, length + 1)
            ends = stopper(cand_flat, all_scores).view(batch, width)

            # Open hypotheses for the next step: the best candidates that did not end.
            open_scores = cand_scores + ends.to(torch.float32) * NEG_LARGE
            keep = torch.topk(open_scores, k=num_beams)[1]
            running = _gather_beams(cand, keep)
            running_scores = _gather_beams(open_scores, keep)
            running_origin = _gather_beams(cand_origin, keep)

            # Finished hypotheses: merge the candidates that ended among the top num_beams.
            just_ended = ends & top_slots[None, :]
            ended_scores = cand_scores / ((length + 1 - prompt_len) ** length_penalty)
            full = torch.all(is_finished, dim=-1, keepdim=True) & (early_stopping is True)
            ended_scores += full.to(torch.float32) * NEG_LARGE
            ended_scores += (~improvable).to(torch.float32) * NEG_LARGE
            ended_scores += (~just_ended) * NEG_LARGE
            best = torch.topk(torch.cat((finished_scores, ended_scores), dim=1), k=num_beams)[1]
            finished = _gather_beams(torch.cat((finished, cand), dim=1), best)
            finished_scores = _gather_beams(torch.cat((finished_scores, ended_scores), dim=1),
                                            best)
            finished_origin = _gather_beams(torch.cat((finished_origin, cand_origin), dim=1),
                                            best)
            is_finished = _gather_beams(torch.cat((is_finished, just_ended), dim=1), best)

            runner.reorder(running_origin[:, :, length - prompt_len].reshape(-1).long())
            length += 1

            # Can an open hypothesis still beat the worst finished one?
            if early_stopping == "never" and length_penalty > 0.0:
                best_len = max_length - prompt_len
            else:
                best_len = length - prompt_len
            best_open = running_scores[:, :1] / (best_len ** length_penalty)
            worst_done = torch.where(is_finished,
                                     torch.min(finished_scores, dim=1, keepdim=True)[0],
                                     NEG_LARGE)
            improvable = improvable & torch.any(best_open > worst_done, dim=-1, keepdim=True)
            go_on = (torch.any(improvable)
                     & ~(torch.all(is_finished) & (early_stopping is True))
                     & ~torch.all(ends))
            if not bool(go_on):
                break
            out = runner.step(running[:, :, :length].reshape(rows, length))

        keep_n = int(config.num_return_sequences or 1)
        sequences = finished[:, :keep_n].reshape(batch * keep_n, max_length)
        sequence_scores = finished_scores[:, :keep_n].reshape(-1)
        origin = finished_origin[:, :keep_n].reshape(batch * keep_n, -1)
        generated = int((origin != -1).sum(dim=1).max())
        sequences = sequences[:, :prompt_len + generated]
        origin = origin[:, :generated]
        if not want:
            return sequences
        return GenerateBeamDecoderOnlyOutput(
            sequences=sequences,
            sequences_scores=sequence_scores if config.output_scores else None,
            scores=None if all_scores is None else tuple(all_scores),
            logits=None if raw is None else tuple(raw),
            beam_indices=origin,
            attentions=None if attentions is None else tuple(attentions),
            hidden_states=None if hidden is None else tuple(hidden),
            past_key_values=runner.cache)

    # -- scores of the chosen tokens -------------------------------------------------------
    def compute_transition_scores(self, sequences: torch.Tensor, scores: tuple,
                                  beam_indices: torch.Tensor | None = None,
                                  normalize_logits: bool = False) -> torch.Tensor:
        """The score of each generated token ([rows, generated]) from `generate`'s `scores`
        (with `beam_indices` after beam search). normalize_logits=True applies log_softmax
        first, giving log-probabilities of the processed distribution."""
        steps = len(scores)
        stacked = torch.stack(scores, dim=1)  # [score rows, steps, vocab]
        if normalize_logits:
            stacked = stacked.float().log_softmax(dim=-1)
        if beam_indices is None:
            beam_indices = torch.arange(stacked.shape[0], device=sequences.device)[:, None]
            beam_indices = beam_indices.expand(-1, steps)
        missing = beam_indices < 0
        generated = int((~missing).sum(dim=-1).max())
        index = beam_indices[:, :generated].clone().long()
        missing = missing[:, :generated]
        index[missing] = 0
        tokens = sequences[:, sequences.shape[-1] - generated:]
        step = torch.arange(generated, device=index.device)[None, :].expand_as(index)
        chosen = stacked.to(index.device)[index, step, tokens.to(index.device)]
        return chosen.masked_fill(missing, 0)


_STOP_STRING_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stop_string_criteria(tokenizer: Any, stop_strings: Any) -> StopStringCriteria:
    """One criteria object per tokenizer and stop strings, so token texts are worked out once."""
    key = tuple([stop_strings] if isinstance(stop_strings, str) else stop_strings)
    try:
        per_tokenizer = _STOP_STRING_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable or not hashable: no caching
        per_tokenizer = {}
    found = per_tokenizer.get(key)
    if found is None:
        found = per_tokenizer[key] = StopStringCriteria(tokenizer, list(key))
    return found


__all__ = [
    "GenerateBeamDecoderOnlyOutput", "GenerateBeamEncoderDecoderOutput",
    "GenerateDecoderOnlyOutput", "GenerateEncoderDecoderOutput", "GenerateOutput",
    "GenerationMixin",
]
