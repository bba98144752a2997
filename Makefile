# The project's three commands: serve, test, bench. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU build of PyTorch by default (lies on this disk); override e.g. TORCH="torch==2.13.0 --index-url ..."
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
DATA ?= ./data

BIN := $(VENV)/bin

.PHONY: serve test bench lint clean

$(BIN)/cove: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(BIN)/cove
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

serve: $(BIN)/cove
	$(BIN)/cove serve --host $(HOST) --port $(PORT) --data $(DATA)

test: $(VENV)/.dev
	HF_HUB_OFFLINE=0 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/python -m pytest -q tests

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench

bench: $(VENV)/.dev
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build src/*.egg-info
