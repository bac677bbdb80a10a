# Two commands set everything up on a fresh machine: `make train` and `make test`.
#
# Variables (override on the command line, e.g. `make train TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128`):
#   TORCH_INDEX_URL  where torch comes from. Default: the CPU release (an unpinned `pip install torch` pulls
#                    ~5.5 GB of CUDA wheels). GPU users: a CUDA index of download.pytorch.org, or https://pypi.org/simple.
#   PYTHON           the interpreter that creates the virtualenv (Python >= 3.11).
#   VENV             where the virtualenv lives.
#   ARGS             extra arguments for `make train` or `make evaluate` (e.g. ARGS="--max_steps 100").
#   MODEL            the model `make evaluate` scores (default: what `make train` saved).
#   EVAL_GUIDANCE    guidance scale of `make evaluate`.

PYTHON ?= python3.11
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
ACCELERATE_CONFIG ?= recipes/accelerate_configs/cpu.yaml
ARGS ?=
PYTEST_ARGS ?=
MODEL ?= outputs/text-render-tiny
EVAL_GUIDANCE ?= 3.0

BIN := $(VENV)/bin
STAMP := $(VENV)/.trl-var-installed

.PHONY: help install tesseract train evaluate test lint clean

help:
	@echo "make train   run recipes/train_text_render.py with accelerate on its embedded default"
	@echo "make evaluate  held-out word accuracy / NED of MODEL (default: make train's output) on the toy prompts"
	@echo "make test    run the test suite"
	@echo "make lint    ruff check"
	@echo "Both create or reuse $(VENV) and install what is missing (torch from $(TORCH_INDEX_URL))."

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first and alone, from TORCH_INDEX_URL (deps come with the package install below, from the usual index).
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	@$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install --no-deps --retries 1 "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX_URL)
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) tesseract

tesseract:
	@if command -v tesseract >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ]; then \
		echo "Installing the Tesseract OCR binary (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr >/dev/null; \
	else \
		echo "The OCR reward needs the Tesseract binary. Run:"; \
		echo "    sudo apt-get update && sudo apt-get install -y tesseract-ocr"; \
		exit 1; \
	fi

train: install
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) recipes/train_text_render.py $(ARGS)

evaluate: install
	$(BIN)/python recipes/evaluate_text_render.py --model $(MODEL) --dataset recipes/data/text_render_heldout.jsonl \
		--dataset_format prompts --guidance_scale $(EVAL_GUIDANCE) --output_dir $(MODEL)/evaluation $(ARGS)

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check trl_var recipes tests benchmarks
	$(BIN)/ruff format --check trl_var recipes tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
