"""zero-shot-classification: any labels, scored by a model fine-tuned on NLI.

As transformers' ZeroShotClassificationPipeline: each (sequence, label) becomes a premise /
hypothesis pair, the hypothesis being `hypothesis_template` filled with the label; the pairs
are tokenised with truncation="only_first" (the hypothesis is never cut) and batched together.
The entailment logit scores a label: softmax over the labels of a sequence, or, with
`multi_label` (or a single label), softmax of entailment against contradiction per label.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from cove.pipelines.base import Pipeline

log = logging.getLogger("cove.pipelines")

DEFAULT_TEMPLATE = "This example is {}."


def parse_labels(labels: Any) -> list[str]:
    """A list of labels, or one string of comma-separated labels."""
    if isinstance(labels, str):
        return [label.strip() for label in labels.split(",") if label.strip()]
    if not isinstance(labels, (list, tuple)):
        raise ValueError("candidate_labels must be a list of strings or a string of "
                         f"comma-separated labels, got {type(labels).__name__}.")
    for label in labels:
        if not isinstance(label, str):
            raise ValueError(f"candidate_labels must be strings, got {type(label).__name__}: "
                             f"{label!r:.80}")
    return list(labels)


class ZeroShotClassificationPipeline(Pipeline):
    """`candidate_labels` (a list, or a string of comma-separated labels; also the first
    positional argument after the inputs), `hypothesis_template` ("This example is {}."),
    `multi_label` (False). Results: {"sequence", "labels", "scores"}, best label first."""

    task = "zero-shot-classification"

    def __init__(self, model: Any, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        if self.entailment_id == -1:
            log.warning("Failed to determine 'entailment' label id from the label2id mapping in "
                        "the model config. Setting to -1. Define a descriptive label2id mapping "
                        "in the model config to ensure correct outputs.")

    @property
    def entailment_id(self) -> int:
        """The id of the first label starting with "entail" (any case); -1 when none does."""
        for label, index in (self.model.config.label2id or {}).items():
            if label.lower().startswith("entail"):
                return int(index)
        return -1

    def _sanitize(self, candidate_labels: Any = None, hypothesis_template: Any = None,
                  multi_label: Any = None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if candidate_labels is not None:
            params["candidate_labels"] = parse_labels(candidate_labels)
        if hypothesis_template is not None:
            if not isinstance(hypothesis_template, str):
                raise ValueError("hypothesis_template must be a string, got "
                                 f"{type(hypothesis_template).__name__}.")
            params["hypothesis_template"] = hypothesis_template
        if multi_label is not None:
            params["multi_label"] = bool(multi_label)
        return params

    def __call__(self, sequences: Any, *args: Any, **kwargs: Any) -> Any:
        """Classify one sequence (a dict back), a list (a list back) or an iterable."""
        if len(args) == 1 and "candidate_labels" not in kwargs:
            kwargs["candidate_labels"] = args[0]
        elif args:
            raise ValueError(f"Unable to understand extra arguments {args}")
        return super().__call__(sequences, **kwargs)

    # -- one (sequence, hypothesis) pair per label -------------------------------------------
    def _run(self, items: list[Any], params: dict[str, Any], batch_size: int) -> list[Any]:
        labels = params.get("candidate_labels")
        if labels is None:
            raise ValueError("zero-shot-classification needs candidate_labels (a list of labels "
                             "or a string of comma-separated labels).")
        if not labels or not items:
            raise ValueError("You must include at least one label and at least one sequence.")
        template = params.get("hypothesis_template", DEFAULT_TEMPLATE)
        try:
            filled = template.format(labels[0])
        except (IndexError, KeyError, ValueError):
            filled = template
        if filled == template:
            raise ValueError(
                f'The provided hypothesis_template "{template}" was not able to be formatted '
                "with the target labels. Make sure the passed template includes formatting "
                "syntax such as {} where the label should go.")
        hypotheses = [template.format(label) for label in labels]
        pairs = [(sequence, hypothesis) for sequence in items for hypothesis in hypotheses]
        logits = super()._run(pairs, params, batch_size)
        n = len(labels)
        return [self._score(sequence, labels, torch.stack(logits[k * n:(k + 1) * n]), params)
                for k, sequence in enumerate(items)]

    def _check(self, item: Any) -> None:
        super()._check(item[0])

    def _tokenize(self, items: list[Any], params: dict[str, Any]) -> dict[str, list]:
        if self.tokenizer.pad_token is None:  # as transformers: pad with the eos token
            log.warning("Tokenizer was not supporting padding necessary for zero-shot, "
                        "attempting to use `pad_token=eos_token`")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        premises = [premise for premise, _ in items]
        hypotheses = [hypothesis for _, hypothesis in items]
        try:
            return dict(self.tokenizer(premises, text_pair=hypotheses, truncation="only_first"))
        except Exception as e:  # the tokenizers backend raises a bare Exception
            if "too short" not in str(e):
                raise
        # A hypothesis longer than the model's limit on its own: as transformers, such a pair
        # is not truncated at all (the others still are).
        out: dict[str, list] = {}
        for premise, hypothesis in items:
            try:
                enc = self.tokenizer(premise, text_pair=hypothesis, truncation="only_first")
            except Exception as e:
                if "too short" not in str(e):
                    raise
                enc = self.tokenizer(premise, text_pair=hypothesis, truncation=False)
            for key, row in enc.items():
                out.setdefault(key, []).append(row)
        return out

    def _postprocess(self, rows, enc, batch, outputs, params) -> list[Any]:
        return list(outputs["logits"].float().cpu())

    def _score(self, sequence: str, labels: list[str], logits: torch.Tensor,
               params: dict[str, Any]) -> dict[str, Any]:
        entailment = self.entailment_id
        if params.get("multi_label", False) or len(labels) == 1:
            contradiction = -1 if entailment == 0 else 0
            scores = torch.softmax(logits[:, [contradiction, entailment]], dim=-1)[:, 1]
        else:
            scores = torch.softmax(logits[:, entailment], dim=-1)
        values = scores.tolist()
        # Best first; equal scores in reverse label order, as transformers' reversed argsort.
        order = sorted(range(len(labels)), key=lambda i: (values[i], i), reverse=True)
        return {"sequence": sequence, "labels": [labels[i] for i in order],
                "scores": [values[i] for i in order]}
