# avgk-book: every target sets up its own virtualenv (.venv) on first use.
#   make book   - execute every notebook and build the HTML book (the main job)
#   make test   - lint + the whole test suite (what CI runs)
#   make demo   - a one-minute tour of the library on synthetic scores
#   make bench  - the loss / calibration benchmark (prints a table)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Readers may point this at a CPU-only or CUDA build; the default takes what pip resolves.
TORCH_PACKAGES ?= torch torchvision
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PACKAGES)
	$(BIN)/python -m pip install --quiet -e ".[test,book]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check avgk_lib tests benchmarks
	$(BIN)/ruff format --check avgk_lib tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m avgk_lib demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_losses.py

clean:
	rm -rf $(VENV) _build .pytest_cache
