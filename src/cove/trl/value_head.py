"""AutoModelForCausalLMWithValueHead: a causal LM with a scalar value head on its last hidden
state (trl's PPO policy: one trunk gives the next-token logits and the value of each state)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """Dropout, then a linear map from the hidden size to one value (trl's `v_head.summary`)."""

    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # the head trains in float32 whatever the trunk's dtype
        return self.summary(self.dropout(hidden_states.to(self.summary.weight.dtype)))


class AutoModelForCausalLMWithValueHead(nn.Module):
    """`pretrained_model` (a causal LM, possibly with an adapter) plus `v_head`.

    `forward(input_ids, attention_mask, ...)` returns `(logits, loss, values)` as trl's did:
    the LM's logits and loss (given labels) and a value per position ([batch, length]).
    `from_pretrained(folder_or_id, **kwargs)` loads the LM with `AutoModelForCausalLM` and the
    head from `value_head.safetensors` when the folder has one (a new head otherwise);
    `save_pretrained(folder)` writes the LM as an ordinary checkpoint plus that file.
    `summary_dropout_prob` (default 0.1) is the head's dropout.
    """

    def __init__(self, pretrained_model: nn.Module, summary_dropout_prob: float = 0.1) -> None:
        super().__init__()
        self.pretrained_model = pretrained_model
        config = pretrained_model.config
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        if hidden is None:
            raise ValueError(f"{type(pretrained_model).__name__}'s config has no hidden_size: "
                             "cannot size the value head")
        self.v_head = ValueHead(hidden, summary_dropout_prob)
        # a small initial value scale, so early value errors do not swamp the policy's loss
        nn.init.normal_(self.v_head.summary.weight, std=0.02)
        nn.init.zeros_(self.v_head.summary.bias)
        self.v_head.to(next(pretrained_model.parameters()).device)

    @property
    def config(self) -> Any:
        return self.pretrained_model.config

    @property
    def generation_config(self) -> Any:
        return self.pretrained_model.generation_config

    @property
    def name_or_path(self) -> str | None:
        return getattr(self.pretrained_model, "name_or_path", None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | nn.Module,
                        *args: Any, summary_dropout_prob: float = 0.1,
                        **kwargs: Any) -> AutoModelForCausalLMWithValueHead:
        """The LM from a folder or id (or an LM already made) with its saved value head, if
        any (`kwargs` go to `AutoModelForCausalLM.from_pretrained`)."""
        if isinstance(pretrained_model_name_or_path, nn.Module):
            return cls(pretrained_model_name_or_path, summary_dropout_prob)
        from cove.models.auto import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = cls(lm, summary_dropout_prob)
        head = model._find_head(str(pretrained_model_name_or_path), kwargs)
        if head is not None:
            from cove.models.checkpoint import read_safetensors

            state = {k.removeprefix("v_head."): v for k, v in read_safetensors(head).items()}
            model.v_head.load_state_dict(state)
        return model

    @staticmethod
    def _find_head(name: str, kwargs: dict[str, Any]) -> str | None:
        local = Path(name) / VALUE_HEAD_FILE
        if Path(name).is_dir():
            return str(local) if local.is_file() else None
        from cove.models.files import resolve_file

        hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir") if k in kwargs}
        return resolve_file(name, VALUE_HEAD_FILE, **hub)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """The LM (or adapter) as `pretrained_model.save_pretrained` writes it, plus the head."""
        from safetensors.torch import save_file

        self.pretrained_model.save_pretrained(save_directory, **kwargs)
        state = {f"v_head.{k}": v.detach().contiguous().cpu()
                 for k, v in self.v_head.state_dict().items()}
        save_file(state, str(Path(save_directory) / VALUE_HEAD_FILE), metadata={"format": "pt"})

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs: Any,
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        kwargs["output_hidden_states"] = True
        kwargs["return_dict"] = True
        out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        values = self.v_head(out.hidden_states[-1]).squeeze(-1)
        return out.logits, out.loss, values

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The LM's generate."""
        return self.pretrained_model.generate(*args, **kwargs)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.pretrained_model.gradient_checkpointing_enable(**kwargs)
