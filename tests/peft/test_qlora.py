"""QLoRA on CPU: the real SmolLM2-135M, imported from its packaged GGUF by Cove's converter into
a float32 folder, loaded in 4 bits (NF4, double quantisation), prepared with
prepare_model_for_kbit_training (frozen base, float32 norms, checkpointed layers) and
fine-tuned with LoRA on all linear layers for 30 steps on a small instruction set: the loss
falls, only the adapters change, the 4-bit codes stay as loaded.
"""

from __future__ import annotations

import pytest
import torch

from cove.models import AutoModelForCausalLM, BitsAndBytesConfig
from cove.models.quantization import Linear4bit
from cove.peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
from cove.tokenizers import AutoTokenizer
from tests.models.test_gguf import smollm2_float32

STEPS, BATCH = 30, 4
PAIRS = [
    ("Name the color of a clear daytime sky.", "Blue."),
    ("What is two plus three?", "Five."),
    ("Give the opposite of hot.", "Cold."),
    ("Which animal says moo?", "A cow."),
    ("Spell the word cat backwards.", "tac"),
    ("What is the capital of Italy?", "Rome."),
    ("How many legs does a spider have?", "Eight."),
    ("Name a fruit that is yellow.", "A banana."),
    ("What do bees make?", "Honey."),
    ("Translate 'hello' into French.", "Bonjour."),
    ("What is frozen water called?", "Ice."),
    ("How many days are in a week?", "Seven."),
    ("Which planet do we live on?", "Earth."),
    ("What is the first letter of the alphabet?", "A."),
    ("Give a word that rhymes with tree.", "Bee."),
    ("What is ten minus four?", "Six."),
    ("Which season comes after winter?", "Spring."),
    ("What gas do plants take in?", "Carbon dioxide."),
    ("Name the largest ocean.", "The Pacific."),
    ("What is the plural of mouse?", "Mice."),
    ("How many hours are in a day?", "Twenty-four."),
    ("What color do you get mixing blue and yellow?", "Green."),
    ("Which animal is known as the king of the jungle?", "The lion."),
    ("What is the boiling point of water in Celsius?", "100 degrees."),
    ("Name a shape with three sides.", "A triangle."),
    ("What do cows drink?", "Water."),
    ("What is three times three?", "Nine."),
    ("Which month has the fewest days?", "February."),
    ("What is the opposite of up?", "Down."),
    ("Name the star at the centre of our solar system.", "The Sun."),
]


@pytest.fixture(scope="module")
def smollm2_folder():
    return smollm2_float32()


def pad(seq: list[int], value: int, width: int) -> list[int]:
    return seq + [value] * (width - len(seq))


def batches(tokenizer) -> list[dict[str, torch.Tensor]]:
    """Prompt + response rows, right-padded per batch; the loss covers the response (and EOS)."""
    rows = []
    for instruction, response in PAIRS:
        prompt = tokenizer(f"Instruction: {instruction}\nResponse:")["input_ids"]
        answer = tokenizer(f" {response}")["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
    out = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        width = max(len(ids) for ids, _ in chunk)
        out.append({
            "input_ids": torch.tensor([pad(ids, tokenizer.eos_token_id, width)
                                       for ids, _ in chunk]),
            "attention_mask": torch.tensor([pad([1] * len(ids), 0, width) for ids, _ in chunk]),
            "labels": torch.tensor([pad(labels, -100, width) for _, labels in chunk]),
        })
    return out


def test_qlora_fine_tune_lowers_the_loss(smollm2_folder):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_folder, dtype=torch.bfloat16,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    model = prepare_model_for_kbit_training(model)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16,
                                             target_modules="all-linear"))
    quantised = {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert len(quantised) == 30 * 7  # every projection of every layer, not the head
    codes = {n: m.qweight.clone() for n, m in quantised.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    data = batches(tokenizer)
    model.train()
    losses = []
    for step in range(STEPS):
        loss = model(**data[step % len(data)]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    first, last = sum(losses[:len(data)]), sum(losses[-len(data):])  # one pass over the data each
    assert last < 0.6 * first, losses
    assert all(torch.equal(m.qweight, codes[n]) for n, m in quantised.items())
