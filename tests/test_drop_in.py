"""Drop-in: code from Hugging Face's quick tours and from the README runs on Cove with only the
library in its import lines changed, and prints what it prints on the reference libraries.

Each program runs twice in fresh interpreters, once on transformers / datasets /
huggingface_hub and once on cove / cove.datasets / cove.hub, each against its own live Cove
server seeded with the same repositories under the ids the tutorials use (tiny random models
saved by transformers), with its own cache and working folder. Top-level expressions are
displayed as the Python prompt shows them (the tutorials' `>>>` lines), so their results are
compared too: text must be equal, numbers equal to printing precision.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.test_minilm import minilm_folder
from tests.pipelines.conftest import VOCAB, randomize
from tests.pipelines.test_text_generation import build_decoders
from tests.server.conftest import seeded_server
from tests.server.live import cove as cove_admin

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parent.parent

# -- the programs, as the tutorials write them ------------------------------------------------
# (The quick tour's `pipeline("sentiment-analysis")` names no model: transformers then pins the
# default model to a huggingface.co commit id, which no other Hub has, so the model is named.)
QUICKTOUR_PIPELINE = '''
from transformers import pipeline

classifier = pipeline("sentiment-analysis", model="distilbert/distilbert-base-uncased-finetuned-sst-2-english")
classifier("We are very happy to show you the 🤗 Transformers library.")
results = classifier(["We are very happy to show you the 🤗 Transformers library.", "We hope you don't hate it."])
for result in results:
    print(f"label: {result['label']}, with score: {round(result['score'], 4)}")
'''

QUICKTOUR_AUTO_CLASSES = '''
import os
from transformers import AutoTokenizer, AutoModelForSequenceClassification, pipeline
from torch import nn

model_name = "nlptown/bert-base-multilingual-uncased-sentiment"
model = AutoModelForSequenceClassification.from_pretrained(model_name)
tokenizer = AutoTokenizer.from_pretrained(model_name)
classifier = pipeline("sentiment-analysis", model=model, tokenizer=tokenizer)
classifier("Nous sommes très heureux de vous présenter la bibliothèque 🤗 Transformers.")

encoding = tokenizer("We are very happy to show you the 🤗 Transformers library.")
print(encoding)
pt_batch = tokenizer(
    ["We are very happy to show you the 🤗 Transformers library.", "We hope you don't hate it."],
    padding=True,
    truncation=True,
    max_length=512,
    return_tensors="pt",
)
pt_model = AutoModelForSequenceClassification.from_pretrained(model_name)
pt_outputs = pt_model(**pt_batch)
pt_predictions = nn.functional.softmax(pt_outputs.logits, dim=-1)
print(pt_predictions)

pt_save_directory = "./pt_save_pretrained"
tokenizer.save_pretrained(pt_save_directory)
pt_model.save_pretrained(pt_save_directory)
pt_model = AutoModelForSequenceClassification.from_pretrained("./pt_save_pretrained")
tokenizer = AutoTokenizer.from_pretrained("./pt_save_pretrained")
print(nn.functional.softmax(pt_model(**tokenizer(["We hope you don't hate it."], return_tensors="pt")).logits, dim=-1))
sorted(os.listdir(pt_save_directory))
'''

CHAT_TEMPLATE_GENERATE = '''
from transformers import AutoModelForCausalLM, AutoTokenizer

checkpoint = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
model = AutoModelForCausalLM.from_pretrained(checkpoint)

messages = [
    {"role": "system", "content": "You are a friendly chatbot who always responds in the style of a pirate"},
    {"role": "user", "content": "How many helicopters can a human eat in one sitting?"},
]
tokenized_chat = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(tokenized_chat["input_ids"][0]))
outputs = model.generate(**tokenized_chat, max_new_tokens=24)
print(tokenizer.decode(outputs[0]))

tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
'''

DATASETS_QUICKTOUR = '''
from datasets import load_dataset
from transformers import AutoTokenizer

dataset = load_dataset("cornell-movie-review-data/rotten_tomatoes")
tokenizer = AutoTokenizer.from_pretrained("distilbert/distilbert-base-uncased")

def tokenize_dataset(dataset):
    return tokenizer(dataset["text"])

dataset = dataset.map(tokenize_dataset, batched=True)
dataset
dataset["train"][0]
dataset["validation"].features
'''

DATASETS_QUICKSTART_NLP = '''
import torch
from datasets import load_dataset
from transformers import AutoTokenizer

dataset = load_dataset("nyu-mll/glue", "mrpc", split="train")
tokenizer = AutoTokenizer.from_pretrained("google-bert/bert-base-uncased")

def encode(examples):
    return tokenizer(examples["sentence1"], examples["sentence2"], truncation=True, padding="max_length", max_length=32)

dataset = dataset.map(encode, batched=True)
dataset[0]
dataset = dataset.map(lambda examples: {"labels": examples["label"]}, batched=True)
dataset.set_format(type="torch", columns=["input_ids", "token_type_ids", "attention_mask", "labels"])
dataloader = torch.utils.data.DataLoader(dataset, batch_size=4)
next(iter(dataloader))
'''

QUICKTOUR_TRAINER = '''
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
from transformers import Trainer, TrainingArguments
from datasets import load_dataset

model = AutoModelForSequenceClassification.from_pretrained("distilbert/distilbert-base-uncased-finetuned-sst-2-english")
tokenizer = AutoTokenizer.from_pretrained("distilbert/distilbert-base-uncased-finetuned-sst-2-english")
dataset = load_dataset("cornell-movie-review-data/rotten_tomatoes")

def tokenize_dataset(dataset):
    return tokenizer(dataset["text"])

dataset = dataset.map(tokenize_dataset, batched=True)
data_collator = DataCollatorWithPadding(tokenizer=tokenizer)
training_args = TrainingArguments(
    output_dir="distilbert-rotten-tomatoes",
    learning_rate=2e-5,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
    num_train_epochs=2,
    push_to_hub=True,
)
trainer = Trainer(
    model=model,
    args=training_args,
    train_dataset=dataset["train"],
    eval_dataset=dataset["test"],
    processing_class=tokenizer,
    data_collator=data_collator,
)
trainer.train()
trainer.evaluate()
trainer.push_to_hub()
'''

# TRL's README examples, with a config a CPU can run (trl needs bf16=False there)
TRL_SFT = '''
from datasets import load_dataset
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

dataset = load_dataset("trl-lib/Capybara", split="train")
model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
training_args = SFTConfig(output_dir="Qwen2.5-0.5B-SFT", max_steps=4, per_device_train_batch_size=2, logging_steps=2, bf16=False)
SFTTrainer(model=model, train_dataset=dataset, args=training_args).train()
'''

TRL_DPO = '''
from datasets import load_dataset
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2-0.5B-Instruct")
dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")
training_args = DPOConfig(output_dir="Qwen2-0.5B-DPO", max_steps=4, per_device_train_batch_size=2, logging_steps=2, bf16=False)
trainer = DPOTrainer(model=model, args=training_args, train_dataset=dataset)
trainer.train()
'''

TUTORIALS = {
    "quicktour-pipeline": QUICKTOUR_PIPELINE,
    "quicktour-auto-classes": QUICKTOUR_AUTO_CLASSES,
    "chat-template-generate": CHAT_TEMPLATE_GENERATE,
    "datasets-quicktour": DATASETS_QUICKTOUR,
    "datasets-quickstart-nlp": DATASETS_QUICKSTART_NLP,
    "quicktour-trainer": QUICKTOUR_TRAINER,
    "trl-sft": TRL_SFT,
    "trl-dpo": TRL_DPO,
}
# Programs whose numbers cannot match (dropout draws, timings): their printed structure must.
STRUCTURE_ONLY = {"quicktour-trainer", "trl-sft", "trl-dpo"}

# The library each import line names: Cove's package for each reference library.
COVE_FOR = {"transformers": "cove", "datasets": "cove.datasets", "huggingface_hub": "cove.hub",
            "accelerate": "cove.accelerate", "peft": "cove.peft", "trl": "cove.trl"}
REFERENCE_FOR = {"cove": "transformers", "cove.models": "transformers",
                 "cove.tokenizers": "transformers", "cove.generation": "transformers",
                 "cove.datasets": "datasets", "cove.hub": "huggingface_hub",
                 "cove.accelerate": "accelerate", "cove.peft": "peft", "cove.trl": "trl"}


def swap_imports(code: str, table: dict[str, str]) -> str:
    """Change only the library named by `import X` / `from X import` lines."""
    def swap(m: re.Match) -> str:
        return f"{m[1]}{table.get(m[2], m[2])}{m[3]}"
    return re.sub(r"^(\s*(?:from|import) )([\w.]+)( |$)", swap, code, flags=re.M)


# Runs a program as the Python prompt would: each top-level expression's value is displayed.
RUNNER = r"""
import ast, sys
tree = ast.parse(open(sys.argv[1], encoding="utf-8").read())
scope = {"__name__": "__main__"}
for node in tree.body:
    if isinstance(node, ast.Expr):
        value = eval(compile(ast.Expression(node.value), "<program>", "eval"), scope)
        if value is not None:
            print(repr(value), flush=True)
    else:
        exec(compile(ast.Module([node], []), "<program>", "exec"), scope)
"""


# -- the Hub both sides talk to ---------------------------------------------------------------
WORDS = ("we are happy to show you library transformers hope don ##t hate nous sommes tres "
         "de la 🤗").split()
NAMESPACES = ("distilbert", "nlptown", "HuggingFaceTB", "google-bert", "cornell-movie-review-data",
              "nyu-mll", "sentence-transformers", "Qwen", "trl-lib")  # acme: made by seeded_server
REVIEWS = ["the movie was great", "a terrible film", "i love this movie", "not very good",
           "so bad", "the cat sat on the mat and it was great", "hello world", "very good film",
           "it was not bad", "great great great", "hate it", "a tiny movie"]


def _bert_folder(root: Path, name: str, cls: str, **config) -> Path:
    """A tiny random BERT-family checkpoint with its tokenizer, as transformers saves them."""
    folder = root / name
    words = list(dict.fromkeys([*VOCAB, *WORDS]))
    (root / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = transformers.BertTokenizer(vocab=str(root / "vocab.txt"), do_lower_case=True,
                                     model_max_length=64)
    kind = transformers.DistilBertConfig if cls.startswith("DistilBert") else transformers.BertConfig
    sizes = ({"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37}
             if kind is transformers.DistilBertConfig else
             {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 37})
    model = getattr(transformers, cls)(kind(vocab_size=len(words), max_position_embeddings=64,
                                            **sizes, **config))
    randomize(model, seed=len(name)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _labels(*names: str) -> dict:
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def build_repositories(root: Path) -> dict[tuple[str, str], Path]:
    """(repo id, repo type) -> the folder of the repositories the programs name."""
    stars = _labels(*[f"{i} star{'s' * (i > 1)}" for i in range(1, 6)])
    models = {
        "distilbert/distilbert-base-uncased-finetuned-sst-2-english":
            _bert_folder(root, "sst2", "DistilBertForSequenceClassification",
                         **_labels("NEGATIVE", "POSITIVE")),
        "nlptown/bert-base-multilingual-uncased-sentiment":
            _bert_folder(root, "stars", "BertForSequenceClassification", **stars),
        "distilbert/distilbert-base-uncased": _bert_folder(root, "distil", "DistilBertForMaskedLM"),
        "google-bert/bert-base-uncased": _bert_folder(root, "bert", "BertForMaskedLM"),
        "sentence-transformers/all-MiniLM-L6-v2": minilm_folder(),  # the real one (make test)
        # Without dropout: the README's Trainer block fine-tunes it, and Cove's training
        # dropout draws its masks differently from torch's (cove.models.dropout), so only
        # dropout-free training prints the same numbers in both libraries.
        "acme/sentiment-bert": _bert_folder(root, "sentiment", "BertForSequenceClassification",
                                            hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0,
                                            **_labels("negative", "neutral", "positive")),
        "alice/tiny-nli": _bert_folder(root, "nli", "BertForSequenceClassification",
                                       **_labels("entailment", "neutral", "contradiction")),
    }
    llama = build_decoders(root, kinds=("llama",))["llama"]
    for repo in ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
                 "alice/smollm2-135m-instruct", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2-0.5B-Instruct"):
        models[repo] = llama
    repos = {(repo, "model"): folder for repo, folder in models.items()}

    import pyarrow as pa
    import pyarrow.parquet as pq
    tomatoes, glue = root / "tomatoes", root / "glue"
    for split, rows in {"train": REVIEWS[:8], "validation": REVIEWS[8:10], "test": REVIEWS[10:]}.items():
        (tomatoes / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": rows, "label": [i % 2 for i in range(len(rows))]}),
                       tomatoes / "data" / f"{split}-00000-of-00001.parquet")
    (tomatoes / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: text\n    dtype: string\n  - name: label\n"
        "    dtype:\n      class_label:\n        names:\n          '0': neg\n          '1': pos\n---\n")
    (glue / "mrpc").mkdir(parents=True)
    pq.write_table(pa.table({"sentence1": REVIEWS[:6], "sentence2": REVIEWS[6:],
                             "label": [0, 1, 1, 0, 1, 0], "idx": list(range(6))}),
                   glue / "mrpc" / "train-00000-of-00001.parquet")
    (glue / "README.md").write_text(
        "---\nconfigs:\n- config_name: mrpc\n  data_files:\n  - split: train\n"
        "    path: mrpc/train-*\n---\n")
    # TRL's example datasets: conversations, and preference pairs with an implicit prompt
    capybara, feedback = root / "capybara" / "data", root / "ultrafeedback" / "data"
    capybara.mkdir(parents=True)
    feedback.mkdir(parents=True)
    turns = [[{"content": REVIEWS[i], "role": "user"},
              {"content": REVIEWS[-1 - i], "role": "assistant"}] for i in range(8)]
    pq.write_table(pa.table({"source": ["tiny"] * 8, "messages": turns}),
                   capybara / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({
        "chosen": [t[:1] + [{"content": REVIEWS[i + 2], "role": "assistant"}]
                   for i, t in enumerate(turns)],
        "rejected": turns, "score_chosen": [8.0] * 8, "score_rejected": [2.0] * 8}),
        feedback / "train-00000-of-00001.parquet")
    repos[("trl-lib/Capybara", "dataset")] = capybara.parent
    repos[("trl-lib/ultrafeedback_binarized", "dataset")] = feedback.parent
    repos[("cornell-movie-review-data/rotten_tomatoes", "dataset")] = tomatoes
    repos[("nyu-mll/glue", "dataset")] = glue
    return repos


@pytest.fixture(scope="module")
def repositories(tmp_path_factory) -> dict[tuple[str, str], Path]:
    return build_repositories(tmp_path_factory.mktemp("drop-in-repos"))


def _start_hub(data: Path, repositories: dict[tuple[str, str], Path]):
    """A live server with the programs' repositories, uploaded by the real huggingface_hub."""
    from huggingface_hub import HfApi

    live = seeded_server(data)
    try:
        for namespace in NAMESPACES:
            cove_admin("admin", "org", "create", namespace, "--member", "alice", data=data)
        api = HfApi(endpoint=live.url, token=live.accounts.alice_write)
        for (repo, kind), folder in repositories.items():
            api.create_repo(repo, repo_type=kind)
            api.upload_folder(repo_id=repo, folder_path=folder, repo_type=kind)
    except BaseException:
        live.stop()  # a failed seeding must not leave the server running
        raise
    return live


@pytest.fixture(scope="module")
def hubs(tmp_path_factory, repositories):
    """One server for each side, seeded alike (the programs push, so they must not share)."""
    live = {}
    try:
        for side in ("reference", "cove"):
            live[side] = _start_hub(tmp_path_factory.mktemp(f"hub-{side}"), repositories)
        yield live
    finally:
        for server in live.values():
            server.stop()


def run_program(code: str, side: str, hub, workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "program.py").write_text(code, encoding="utf-8")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": hub.accounts.alice_write,
           "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(workdir / "hf-home"),
           "HF_DATASETS_CACHE": str(workdir / "datasets-cache"),
           "COVE_DATASETS_CACHE": str(workdir / "datasets-cache"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT / "src"), "PYTHONIOENCODING": "utf-8"}
    env.pop("COVE_ENDPOINT", None)
    env.pop("COVE_TOKEN", None)
    out = subprocess.run([sys.executable, "-c", RUNNER, "program.py"], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{side} failed:\n{code}\n--- stderr ---\n{out.stderr[-4000:]}"
    # What may differ: the server's port, commit ids (times), the client's name in messages,
    # and the timings a Trainer logs.
    text = out.stdout.replace(hub.url, "<hub>").replace("huggingface_hub", "<client>")
    text = re.sub(r"\b[0-9a-f]{40}\b", "<commit>", text.replace("using cove", "using <client>"))
    return re.sub(r"('\w*(?:runtime|per_second)': )'?[-\d.e+]+'?", r"\1<time>", text)


NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def assert_same_output(ours: str, theirs: str) -> None:
    """Equal text; decimal numbers equal to the last printed digit or two (float noise)."""
    ours_parts, theirs_parts = NUMBER.split(ours), NUMBER.split(theirs)
    assert ours_parts == theirs_parts, f"Cove printed:\n{ours}\nthe reference printed:\n{theirs}"
    for a, b in zip(NUMBER.findall(ours), NUMBER.findall(theirs), strict=True):
        assert abs(float(a) - float(b)) <= 2e-4 + 1e-4 * abs(float(b)), (a, b, ours)


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorials_run_unchanged_but_for_imports(name, hubs, tmp_path):
    code = TUTORIALS[name]
    theirs = run_program(code, "reference", hubs["reference"], tmp_path / "reference")
    ours = run_program(swap_imports(code, COVE_FOR), "cove", hubs["cove"], tmp_path / "cove")
    assert theirs.strip(), "the program printed nothing to compare"
    if name in STRUCTURE_ONLY:
        ours, theirs = (NUMBER.sub("<number>", text) for text in (ours, theirs))
    assert_same_output(ours, theirs)


# -- the README's Python blocks ----------------------------------------------------------------
def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _prepare_readme_workdir(workdir: Path, tiny_bert: Path) -> None:
    import shutil
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_bert, workdir / "tiny-bert")
    (workdir / "reviews.csv").write_text(
        "text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(REVIEWS * 4)))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """The README's ./tiny-bert folder, which its first block uploads as alice/tiny-bert."""
    return _bert_folder(tmp_path_factory.mktemp("readme"), "tiny-bert", "BertForMaskedLM")


def test_readme_blocks_run_on_both(hubs, tiny_bert, tmp_path):
    """Every Python block of the README: in the README's form, and with the other library in
    its import lines; Cove-only blocks (marked `# Cove only`) run on Cove alone."""
    blocks = readme_blocks()
    assert len(blocks) >= 7
    for side in ("reference", "cove"):
        _prepare_readme_workdir(tmp_path / side, tiny_bert)
    outputs: dict[str, list[str]] = {"reference": [], "cove": []}
    for block in blocks:
        uses_cove = re.search(r"^(from|import) cove\b", block, flags=re.M) is not None
        forms = {"cove": block if uses_cove else swap_imports(block, COVE_FOR)}
        if "# Cove only" not in block:
            forms["reference"] = swap_imports(block, REFERENCE_FOR) if uses_cove else block
        for side, code in forms.items():
            outputs[side].append(run_program(code, side, hubs[side], tmp_path / side))
        if "reference" in forms:
            assert_same_output(outputs["cove"][-1], outputs["reference"][-1])
    assert json.dumps(outputs["cove"]).count("\\n") > 5, "the README's blocks printed too little"
