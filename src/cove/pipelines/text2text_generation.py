"""text2text-generation, summarization, translation: text in, text out, with an
encoder-decoder model (T5, BART, Marian).

transformers 5 dropped these three pipelines; Cove keeps transformers 4.x's (4.57): the same
task names (`translation_en_to_fr` and the like too), default models, inputs and outputs. They
differ only in the output key (`generated_text`, `summary_text`, `translation_text`) and in the
model configuration's `task_specific_params` entry they read. One string answers a list of
records (one per returned sequence); a list answers a list of records, or of lists of records
when an input returns several sequences; an iterable yields each input's list as it comes.

Generation parameters, lowest priority first: the pipeline's defaults (max_new_tokens=256,
num_beams=4); the model's generation config, for fields the defaults leave at the library
default (so a model's own `max_length` replaces the 256 new tokens); the task's
`task_specific_params` (whose `prefix`, e.g. T5's "summarize: ", is put before every input);
the arguments given at construction, then at the call (or a `generation_config=` of the call's,
which replaces the pipeline's as a whole). One deliberate difference from 4.57: a `max_length`
set by the task parameters or the caller is honoured (4.57 lets the pipeline's 256 new tokens
win over it when the model's config has no max_length, as on T5).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch

from cove.generation.configuration import GLOBAL_DEFAULTS, GenerationConfig
from cove.pipelines.base import Pipeline, batches

# transformers 4.57's Text2TextGenerationPipeline._default_generation_config
GENERATION_DEFAULTS = {"max_new_tokens": 256, "num_beams": 4}
_BOOKKEEPING = ("transformers_version", "cove_version", "_from_model_config")


class Text2TextGenerationPipeline(Pipeline):
    """Texts in, generated texts out. Keyword arguments (at construction or per call):
    `return_tensors` (token ids instead of text), `return_text`, `clean_up_tokenization_spaces`
    (False), `truncation` (of the inputs to the model's length), `stop_sequence` (its first
    token ends generation, as 4.57), `generation_config`; the rest go to `generate`
    (max_new_tokens, num_beams, do_sample, min_length, no_repeat_ngram_size, ...)."""

    task = "text2text-generation"
    return_name = "generated"
    chunk_batches = 1  # generation is slow: each batch's results as soon as it is done

    def __init__(self, model: Any, tokenizer: Any, **kwargs: Any) -> None:
        if not (getattr(model.config, "is_encoder_decoder", False)
                and callable(getattr(model, "generate", None))):
            task = kwargs.get("task") or self.task
            raise ValueError(f"A {type(model).__name__} cannot run the {task!r} task: it needs "
                             "an encoder-decoder model with a language modeling head (T5, BART, "
                             "Marian: AutoModelForSeq2SeqLM).")
        super().__init__(model, tokenizer, **kwargs)
        self.generation_config, self.prefix = self._task_generation_config()

    def _task_generation_config(self) -> tuple[GenerationConfig, str]:
        """The pipeline's generation config and input prefix (see the module docstring)."""
        config = GenerationConfig(**GENERATION_DEFAULTS)
        for key, value in self.model.generation_config.to_diff_dict().items():
            if key in _BOOKKEEPING or value is None or value == GLOBAL_DEFAULTS.get(key):
                continue
            current = getattr(config, key, None)
            if current is None or current == GLOBAL_DEFAULTS.get(key):
                setattr(config, key, value)
        self._default_max_new_tokens = config.max_new_tokens == GENERATION_DEFAULTS[
            "max_new_tokens"]
        if config.max_length not in (None, GLOBAL_DEFAULTS["max_length"]):
            self._drop_default_max_new_tokens(config)
        prefix = getattr(self.model.config, "prefix", None) or ""
        params = dict((getattr(self.model.config, "task_specific_params", None) or {})
                      .get(self.task) or {})
        prefix = params.pop("prefix", prefix)
        if params:
            config.update(**params)
            if "max_length" in params and "max_new_tokens" not in params:
                self._drop_default_max_new_tokens(config)
        if config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            config.pad_token_id = self.tokenizer.pad_token_id
        if not isinstance(prefix, str):
            raise ValueError(f"The model's prefix must be a string, got {prefix!r:.80}.")
        return config, prefix

    def _drop_default_max_new_tokens(self, config: GenerationConfig) -> None:
        if self._default_max_new_tokens:
            config.max_new_tokens = None
            self._default_max_new_tokens = False

    # -- parameters --------------------------------------------------------------------------
    def _sanitize(self, return_tensors: Any = None, return_text: Any = None,
                  clean_up_tokenization_spaces: Any = None, truncation: Any = None,
                  stop_sequence: Any = None, **generate_kwargs: Any) -> dict[str, Any]:
        pre: dict[str, Any] = {}
        post: dict[str, Any] = {}
        if truncation is not None:
            pre["truncation"] = truncation
        if return_tensors is not None:
            post["return_tensors"] = bool(return_tensors)
        if return_text is not None:
            post["return_text"] = bool(return_text)
        if clean_up_tokenization_spaces is not None:
            post["clean_up_tokenization_spaces"] = bool(clean_up_tokenization_spaces)
        if stop_sequence is not None:
            if not isinstance(stop_sequence, str) or not stop_sequence:
                raise ValueError(f"stop_sequence must be a non-empty string, got "
                                 f"{stop_sequence!r:.80}.")
            ids = self.tokenizer.encode(stop_sequence, add_special_tokens=False)
            if not ids:
                raise ValueError(f"stop_sequence {stop_sequence!r} has no tokens.")
            generate_kwargs["eos_token_id"] = ids[0]  # (4.57: only its first token counts)
        config = generate_kwargs.get("generation_config")
        if config is not None and not isinstance(config, GenerationConfig):
            raise ValueError("generation_config must be a GenerationConfig, got "
                             f"{type(config).__name__}.")
        return {"pre": pre, "gen": generate_kwargs, "post": post}

    def _generate_kwargs(self, gen: dict[str, Any]) -> dict[str, Any]:
        """This call's generate arguments: the pipeline's generation config (or the call's
        generation_config) and the other arguments."""
        gen = dict(gen)
        if "generation_config" in gen:
            return gen
        config = self.generation_config
        if self._default_max_new_tokens and "max_length" in gen and "max_new_tokens" not in gen:
            config = copy.deepcopy(config)
            config.max_new_tokens = None
        return {"generation_config": config, **gen}

    # -- calling -----------------------------------------------------------------------------
    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        """Generate for one text (a list of records back), a list of texts (a list back) or
        an iterable of texts (each input's records yielded as they come)."""
        batch_size = self._batch_size(kwargs)
        params = _merge(self._params, self._sanitized(kwargs)) if kwargs else self._params
        if isinstance(inputs, str):
            return self._run([inputs], params, 1)[0]
        if isinstance(inputs, (bytes, bytearray, dict)):
            raise ValueError(f"{self.task} pipeline expects a string, a list of strings or an "
                             f"iterable of strings, got {type(inputs).__name__}.")
        if isinstance(inputs, (list, tuple)):
            self._check_batching(batch_size)
            results = self._run(list(inputs), params, batch_size)
            if all(len(records) == 1 for records in results):
                return [records[0] for records in results]
            return results
        if isinstance(inputs, Iterable):
            self._check_batching(batch_size)
            return self._iterate(inputs, params, batch_size)
        raise ValueError(f"{self.task} pipeline expects a string, a list of strings or an "
                         f"iterable of strings, got {type(inputs).__name__}.")

    def _check_batching(self, batch_size: int) -> None:
        if batch_size > 1 and self.tokenizer.pad_token_id is None:
            raise ValueError("Please make sure that the tokenizer has a pad_token_id when using "
                             "a batch input (batch_size > 1).")

    def _run(self, items: list[Any], params: dict[str, Any], batch_size: int) -> list[Any]:
        if not items:
            return []
        for item in items:
            self._check(item)
        if params["post"].get("return_text") is False and not params["post"].get("return_tensors"):
            raise ValueError("return_text=False needs return_tensors=True: the pipeline returns "
                             "either the text or the token ids.")
        generate_kwargs = self._generate_kwargs(params["gen"])
        truncation = params["pre"].get("truncation", False)
        enc = dict(self.tokenizer([self.prefix + item for item in items], truncation=truncation))
        ids = enc["input_ids"]
        results: list[Any] = [None] * len(ids)
        with torch.inference_mode():
            for rows in batches([len(row) for row in ids], batch_size):
                batch = self._collate(rows, enc)
                batch.pop("token_type_ids", None)  # (4.57 drops them too: not generate's)
                output = self.model.generate(**batch, **generate_kwargs)
                sequences = output if isinstance(output, torch.Tensor) else output["sequences"]
                per_input = sequences.shape[0] // len(rows)
                sequences = sequences.reshape(len(rows), per_input, -1).cpu().tolist()
                for i, rows_sequences in zip(rows, sequences, strict=True):
                    results[i] = [self._record(seq, generate_kwargs, params["post"])
                                  for seq in rows_sequences]
        return results

    def _check(self, item: Any) -> None:
        if not isinstance(item, str):
            raise ValueError(f"{self.task} pipeline expects strings, got "
                             f"{type(item).__name__}: {item!r:.80}")

    def _record(self, sequence: list[int], generate_kwargs: dict[str, Any],
                post: dict[str, Any]) -> dict[str, Any]:
        if post.get("return_tensors"):
            return {f"{self.return_name}_token_ids": self._own_tokens(sequence,
                                                                       generate_kwargs)}
        text = self.tokenizer.decode(
            sequence, skip_special_tokens=True,
            clean_up_tokenization_spaces=post.get("clean_up_tokenization_spaces", False))
        return {f"{self.return_name}_text": text}

    def _own_tokens(self, sequence: list[int], generate_kwargs: dict[str, Any]) -> list[int]:
        """The sequence up to its end-of-sequence token: without the padding of a batch,
        which depends on the other rows (Cove's batches are sorted by length)."""
        config = generate_kwargs.get("generation_config") or self.generation_config
        eos = generate_kwargs.get("eos_token_id", config.eos_token_id)
        if eos is None:
            eos = self.model.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        for position in range(1, len(sequence)):  # (position 0 is the decoder start token)
            if sequence[position] in stops:
                return sequence[:position + 1]
        return sequence


class SummarizationPipeline(Text2TextGenerationPipeline):
    """Summarize texts: records {"summary_text": ...} (or "summary_token_ids")."""

    task = "summarization"
    return_name = "summary"


class TranslationPipeline(Text2TextGenerationPipeline):
    """Translate texts: records {"translation_text": ...} (or "translation_token_ids"). The task
    may name its languages, `translation_en_to_fr`: the model's task_specific_params for that
    task then apply (T5's "translate English to French: " prefix). `src_lang` / `tgt_lang` are
    accepted; as in transformers they have no effect on single-pair models (T5, Marian)."""

    task = "translation"
    return_name = "translation"

    def _sanitize(self, src_lang: Any = None, tgt_lang: Any = None,
                  **kwargs: Any) -> dict[str, Any]:
        for name, value in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a language code string, got {value!r:.80}.")
        return super()._sanitize(**kwargs)


def _merge(params: dict[str, dict], more: dict[str, dict]) -> dict[str, dict]:
    return {key: {**params.get(key, {}), **more.get(key, {})} for key in ("pre", "gen", "post")}
