"""text-generation: continue prompts, or chats, with a causal language model.

Follows transformers 5's TextGenerationPipeline. A string is a prompt; a list of
{"role", "content"} messages is one chat (formatted with the tokenizer's chat template); a list
of them is a batch. Each input answers a list of {"generated_text": ...} (one per returned
sequence): the prompt and its continuation (`return_full_text`, the default), the
continuation only, or, for a chat, the conversation with the new assistant message appended
(or the final message continued, `continue_final_message`). `return_tensors=True` answers
{"generated_token_ids": [...]} instead: the prompt's ids and the new ones, without the left
padding of a batch (which transformers keeps; Cove's batches are sorted by length, so keeping
it would make the ids depend on the batch).

Any other keyword argument goes to the model's `generate` (max_new_tokens, do_sample,
num_beams, num_return_sequences, stop_strings, generation_config, ...). Parameters that
neither the call nor the model's generation config set take the pipeline's defaults, as
transformers: max_new_tokens=256, do_sample=True, temperature=0.7 (the sampling ones only when
sampling) and the tokenizer's pad token.

Batches (`batch_size` > 1) are sorted by length, left-padded and generated together: the
tokenizer's padding side becomes "left", and a tokenizer without a pad token cannot batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch

from cove.generation.configuration import FIELDS
from cove.pipelines.base import Pipeline, batches

# The defaults the pipeline adds (transformers' TextGenerationPipeline._default_generation_config).
GENERATION_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
# Added only when sampling (generate warns about them otherwise).
_SAMPLING_PARAMS = {"temperature", "top_k", "top_p", "min_p", "top_h", "typical_p",
                    "epsilon_cutoff", "eta_cutoff"}
_TENSORS, _NEW_TEXT, _FULL_TEXT = "tensors", "new_text", "full_text"
_NO_PAD = ("Pipeline with tokenizer without pad_token cannot do batching. You can try to set it "
           "with `pipe.tokenizer.pad_token_id = model.config.eos_token_id`.")


def is_message(item: Any) -> bool:
    """A chat message: a dict with "role" and "content"."""
    return isinstance(item, dict) and "role" in item and "content" in item


class Chat:
    """One conversation (so that a list of messages is not taken for a batch of prompts)."""

    def __init__(self, messages: Any) -> None:
        messages = list(messages)
        for message in messages:
            if not is_message(message):
                raise ValueError("When passing chat dicts as input, each dict must have a 'role' "
                                 "and 'content' key.")
        self.messages = messages


class TextGenerationPipeline(Pipeline):
    """Prompts or chats in, generated text out. Keyword arguments (at construction or per
    call): `return_full_text`, `return_tensors`, `return_text`, `prefix`,
    `continue_final_message`, `stop_sequence`, `handle_long_generation` ("hole"),
    `clean_up_tokenization_spaces`, `skip_special_tokens`, `add_special_tokens`, `truncation`,
    `padding`, `max_length`, `tokenizer_encode_kwargs`, `tools`, `documents`; the rest go to
    `generate`."""

    task = "text-generation"
    chunk_batches = 1  # generation is slow: each batch's results as soon as it is done

    def __init__(self, model: Any, tokenizer: Any, **kwargs: Any) -> None:
        if not callable(getattr(model, "generate", None)):
            raise ValueError(f"A {type(model).__name__} cannot run the text-generation task: it "
                             "needs a causal language model.")
        # Generation parameters given at construction apply to every call, unless a call
        # passes its own generation_config (as transformers).
        generation_keys = {*FIELDS, "generation_config"}
        self._generate_init = {k: kwargs.pop(k) for k in list(kwargs) if k in generation_keys}
        # Decoder-only models need left padding for batched generation.
        if getattr(tokenizer, "padding_side", None) == "right":
            tokenizer.padding_side = "left"
        super().__init__(model, tokenizer, **kwargs)
        self._generation_defaults = dict(GENERATION_DEFAULTS)
        if tokenizer.pad_token_id is not None:
            self._generation_defaults["pad_token_id"] = tokenizer.pad_token_id
        prefix = getattr(model.config, "prefix", None)
        if prefix is not None and "prefix" not in self._params["pre"]:
            self._params = _merge(self._params, self._sanitize(prefix=prefix))

    # -- parameters --------------------------------------------------------------------------
    def _sanitize(self, return_full_text: Any = None, return_tensors: Any = None,
                  return_text: Any = None, clean_up_tokenization_spaces: Any = None,
                  prefix: Any = None, handle_long_generation: Any = None,
                  stop_sequence: Any = None, truncation: Any = None, max_length: Any = None,
                  continue_final_message: Any = None, skip_special_tokens: Any = None,
                  tokenizer_encode_kwargs: Any = None, tools: Any = None,
                  documents: Any = None, **generate_kwargs: Any) -> dict[str, Any]:
        pre: dict[str, Any] = {}
        post: dict[str, Any] = {}
        add_special_tokens = False
        if "add_special_tokens" in generate_kwargs:
            add_special_tokens = pre["add_special_tokens"] = generate_kwargs.pop(
                "add_special_tokens")
        if "padding" in generate_kwargs:
            pre["padding"] = generate_kwargs.pop("padding")
        if truncation is not None:
            pre["truncation"] = truncation
        if max_length is not None:  # both the tokenizer's and generate's, as transformers
            pre["max_length"] = generate_kwargs["max_length"] = max_length
        if tools is not None:
            pre["tools"] = post["tools"] = tools
        if documents is not None:
            pre["documents"] = documents
        if prefix is not None:
            if not isinstance(prefix, str):
                raise ValueError(f"prefix must be a string, got {type(prefix).__name__}.")
            pre["prefix"] = prefix
        if prefix:
            prefix_ids = self.tokenizer(prefix, add_special_tokens=add_special_tokens)
            generate_kwargs["prefix_length"] = len(prefix_ids["input_ids"])
        if handle_long_generation is not None:
            if handle_long_generation != "hole":
                raise ValueError(f"{handle_long_generation} is not a valid value for "
                                 "`handle_long_generation` parameter expected [None, 'hole']")
            pre["handle_long_generation"] = handle_long_generation
        if continue_final_message is not None:
            pre["continue_final_message"] = post["continue_final_message"] = \
                continue_final_message
        if tokenizer_encode_kwargs is not None:
            if not isinstance(tokenizer_encode_kwargs, dict):
                raise ValueError("tokenizer_encode_kwargs must be a dict.")
            pre["tokenizer_encode_kwargs"] = tokenizer_encode_kwargs
        if stop_sequence is not None:
            stops = [stop_sequence] if isinstance(stop_sequence, str) else stop_sequence
            if not isinstance(stops, (list, tuple)) or not all(isinstance(x, str)
                                                               for x in stops):
                raise ValueError("stop_sequence must be a string or a list of strings, got "
                                 f"{stop_sequence!r:.80}.")
            generate_kwargs["stop_strings"] = list(stops)

        if return_full_text is not None:
            if return_text is not None:
                raise ValueError("`return_text` is mutually exclusive with `return_full_text`")
            if return_tensors is not None:
                raise ValueError("`return_full_text` is mutually exclusive with `return_tensors`")
            post["return_type"] = _FULL_TEXT if return_full_text else _NEW_TEXT
        elif return_tensors:
            if return_text is not None:
                raise ValueError("`return_text` is mutually exclusive with `return_tensors`")
            post["return_type"] = _TENSORS
        if clean_up_tokenization_spaces is not None:
            post["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        if skip_special_tokens is not None:
            post["skip_special_tokens"] = skip_special_tokens
        return {"pre": pre, "gen": generate_kwargs, "post": post}

    def _generate_kwargs(self, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
        """This call's generate arguments: the call's own, over the construction ones unless
        the call passes a generation_config; then the pipeline's defaults for what neither
        these nor the model's generation config set."""
        generate_kwargs = dict(generate_kwargs)
        prefix_length = generate_kwargs.pop("prefix_length", 0)
        if "generation_config" not in generate_kwargs:
            generate_kwargs = {**self._generate_init, **generate_kwargs}
        set_params = self._set_params(generate_kwargs)
        added = {k: v for k, v in self._generation_defaults.items()
                 if k not in set_params and not (k == "max_new_tokens" and "max_length" in
                                                 set_params)}
        if not {**set_params, **added}.get("do_sample"):
            added = {k: v for k, v in added.items() if k not in _SAMPLING_PARAMS}
        user_config = generate_kwargs.get("generation_config")
        if user_config is None:
            generate_kwargs = {**generate_kwargs, **added}
        else:
            user_config = copy.deepcopy(user_config)
            user_config.update(**added)
            generate_kwargs = {**generate_kwargs, "generation_config": user_config}
        if prefix_length:  # a total length has to include the prefix
            params = self._set_params(generate_kwargs)
            for length, new_tokens in (("max_length", "max_new_tokens"),
                                       ("min_length", "min_new_tokens")):
                if length in params and new_tokens not in params:
                    generate_kwargs[length] = params[length] + prefix_length
        return generate_kwargs

    def _set_params(self, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The parameters set by the call, its generation_config, or the model's."""
        params = self.model.generation_config.to_diff_dict()
        if (config := generate_kwargs.get("generation_config")) is not None:
            params.update(config.to_diff_dict())
        return {**params, **generate_kwargs}

    # -- calling -----------------------------------------------------------------------------
    def __call__(self, text_inputs: Any, **kwargs: Any) -> Any:
        """Generate for one prompt or chat (a list of results back), a list of them (a list
        of lists) or an iterable (results yielded as they come)."""
        batch_size = self._batch_size(kwargs)
        params = _merge(self._params, self._sanitize(**kwargs)) if kwargs else self._params
        inputs = text_inputs
        if isinstance(inputs, str):
            return self._run([inputs], params, 1)[0]
        if isinstance(inputs, dict):
            raise ValueError("A chat is a list of {'role': ..., 'content': ...} messages, not "
                             "one message dict.")
        if isinstance(inputs, (bytes, bytearray)):  # iterable, but never meant as items
            raise ValueError(f"{self.task} pipeline got bytes: decode them to a str first.")
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                return []
            if is_message(inputs[0]):
                return self._run([Chat(inputs)], params, 1)[0]
            if isinstance(inputs[0], (list, tuple)) and all(
                    isinstance(chat, (list, tuple)) and chat and is_message(chat[0])
                    for chat in inputs):
                items: list[Any] = [Chat(chat) for chat in inputs]
            else:
                items = list(inputs)
            self._check_batching(batch_size)
            return self._run(items, params, batch_size)
        if isinstance(inputs, Iterable):
            stream = iter(inputs)
            try:
                first = next(stream)
            except StopIteration:
                return iter(())
            if is_message(first):  # a generator of messages is one chat
                return self._run([Chat([first, *stream])], params, 1)[0]
            self._check_batching(batch_size)
            stream = chain([first], stream)
            if isinstance(first, (list, tuple)) and first and is_message(first[0]):
                stream = (Chat(chat) for chat in stream)
            return self._iterate(stream, params, batch_size)
        raise ValueError(f"{self.task} pipeline expects a string, a chat, a list or an "
                         f"iterable, got {type(inputs).__name__}.")

    def _check_batching(self, batch_size: int) -> None:
        if batch_size > 1 and self.tokenizer.pad_token_id is None:
            raise ValueError(_NO_PAD)

    def _check(self, item: Any) -> None:
        if not isinstance(item, (str, Chat)):
            raise ValueError(f"{self.task} pipeline expects strings or chats (lists of "
                             f"messages), got {type(item).__name__}: {item!r:.80}")

    def _run(self, items: list[Any], params: dict[str, Any], batch_size: int) -> list[Any]:
        for item in items:
            self._check(item)
        generate_kwargs = self._generate_kwargs(params["gen"])
        rows = [self._encode(item, params["pre"], generate_kwargs) for item in items]
        results: list[Any] = [None] * len(rows)
        with torch.inference_mode():
            for batch in batches([len(ids) for ids, _ in rows], batch_size):
                for i, result in zip(batch, self._generate([rows[i] for i in batch],
                                                           [items[i] for i in batch],
                                                           generate_kwargs, params["post"]),
                                     strict=True):
                    results[i] = result
        return results

    # -- one input -> token ids --------------------------------------------------------------
    def _encode(self, item: Any, pre: dict[str, Any],
                generate_kwargs: dict) -> tuple[list[int], list[int]]:
        """The input ids and attention mask of one prompt or chat."""
        tokenizer_kwargs = {k: pre[k] for k in ("add_special_tokens", "truncation", "padding",
                                                "max_length") if pre.get(k) is not None}
        tokenizer_kwargs.update(pre.get("tokenizer_encode_kwargs") or {})
        if isinstance(item, Chat):
            tokenizer_kwargs.pop("add_special_tokens", None)  # chats: the template's tokens
            continue_final = pre.get("continue_final_message")
            if continue_final is None:  # a final assistant message is a prefill by default
                continue_final = item.messages[-1]["role"] == "assistant"
            enc = self.tokenizer.apply_chat_template(
                item.messages, add_generation_prompt=not continue_final,
                continue_final_message=continue_final, return_dict=True,
                tools=pre.get("tools"), documents=pre.get("documents"), **tokenizer_kwargs)
        else:
            enc = self.tokenizer(pre.get("prefix", "") + item, **tokenizer_kwargs)
        ids = list(enc["input_ids"])
        # (not all ones when the caller asked the tokenizer for padding)
        mask = list(enc.get("attention_mask") or [1] * len(ids))
        if pre.get("handle_long_generation") == "hole":
            keep = self._hole(len(ids), generate_kwargs)
            ids, mask = ids[len(ids) - keep:], mask[len(mask) - keep:]
        return ids, mask

    def _hole(self, length: int, generate_kwargs: dict) -> int:
        """How many of the prompt's last tokens to keep so that they and the new tokens fit
        the model's length."""
        params = self._set_params(generate_kwargs)
        new_tokens = params.get("max_new_tokens")
        if new_tokens is None:
            new_tokens = params["max_length"] - length
            if new_tokens < 0:
                raise ValueError("We cannot infer how many new tokens are expected")
        limit = self.tokenizer.model_max_length
        if length + new_tokens <= limit:
            return length
        keep = limit - new_tokens
        if keep <= 0:
            raise ValueError("We cannot use `hole` to handle this generation the number of "
                             "desired tokens exceeds the models max length")
        return keep

    # -- one batch ---------------------------------------------------------------------------
    def _generate(self, rows: list[tuple[list[int], list[int]]], items: list[Any],
                  generate_kwargs: dict, post: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Generate for (ids, mask) rows, left-padded together; their records."""
        width = max(len(ids) for ids, _ in rows)
        # The tokenizer lets generate honour stop strings (transformers' pipeline only passes
        # it for stop_sequence).
        generate_kwargs = {"tokenizer": self.tokenizer, **generate_kwargs}
        if width == 0:  # empty prompts: generate starts from the bos token, one at a time
            if len(rows) > 1:
                return [self._generate([r], [it], generate_kwargs, post)[0]
                        for r, it in zip(rows, items, strict=True)]
            output = self.model.generate(**generate_kwargs)
        else:
            pad = self.tokenizer.pad_token_id
            if pad is None:  # one row: never padded
                pad = 0
            ids = torch.tensor([[pad] * (width - len(r)) + r for r, _ in rows],
                               device=self.device)
            mask = torch.tensor([[0] * (width - len(m)) + m for _, m in rows],
                                device=self.device)
            output = self.model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs)
        if isinstance(output, torch.Tensor):
            sequences, extras = output, {}
        else:
            sequences = output["sequences"]
            extras = _split_outputs(output, sequences.shape[0], len(rows))
        per_input = sequences.shape[0] // len(rows)
        sequences = sequences.reshape(len(rows), per_input, -1).cpu().tolist()
        return [self._records(sequences[b], width, width - len(rows[b][0]), items[b],
                              {k: v[b] for k, v in extras.items()}, post)
                for b in range(len(rows))]

    def _records(self, sequences: list[list[int]], prompt_length: int, padding: int,
                 item: Any, extras: dict[str, list], post: dict[str, Any]) -> list[dict]:
        return_type = post.get("return_type", _FULL_TEXT)
        skip_special_tokens = post.get("skip_special_tokens")
        skip_special_tokens = True if skip_special_tokens is None else skip_special_tokens
        response_template = getattr(self.tokenizer, "response_template", None)
        if response_template:
            skip_special_tokens = False
        records = []
        for index, sequence in enumerate(sequences):
            if return_type == _TENSORS:
                # the row without the batch's left padding (transformers keeps it)
                records.append({"generated_token_ids": sequence[padding:]})
                continue
            text = self.tokenizer.decode(
                sequence[prompt_length:], skip_special_tokens=skip_special_tokens,
                clean_up_tokenization_spaces=post.get("clean_up_tokenization_spaces"))
            if return_type == _FULL_TEXT:
                text = self._full_text(item, text, post, response_template)
            record: dict[str, Any] = {"generated_text": text}
            for key, values in extras.items():
                record[key] = values[index]
            records.append(record)
        return records

    def _full_text(self, item: Any, text: str, post: dict[str, Any],
                   response_template: Any) -> Any:
        if isinstance(item, str):
            return item + text
        messages = item.messages
        continue_final = post.get("continue_final_message")
        if continue_final is None:
            continue_final = messages[-1]["role"] == "assistant"
        if continue_final:  # the prefilled final message, continued
            last = messages[-1]
            return [*messages[:-1], {"role": last["role"], "content": last["content"] + text}]
        if response_template is not None:
            raise NotImplementedError(
                "This tokenizer has a response_template: parsing the reply into a message is "
                "not supported by Cove yet. Pass return_full_text=False to get the raw text.")
        return [*messages, {"role": "assistant", "content": text}]


def _merge(params: dict[str, dict], more: dict[str, dict]) -> dict[str, dict]:
    return {key: {**params.get(key, {}), **more.get(key, {})} for key in ("pre", "gen", "post")}


def _split_outputs(output: Any, rows: int, inputs: int) -> dict[str, list]:
    """generate's other per-sequence outputs (scores, sequences_scores, beam_indices, ...) as
    lists [input][sequence]..., as transformers adds them to each record."""
    out = {}
    for key, value in output.items():
        if key in ("sequences", "past_key_values"):
            continue
        if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor) \
                and len(value[0]) == rows:
            value = torch.stack(value).swapaxes(0, 1)
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            out[key] = value.reshape(inputs, rows // inputs, *value.shape[1:]).cpu().tolist()
    return out
