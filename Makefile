# avgk-book: every target sets up its own virtualenv (.venv) on first use.
#   make book        - execute every notebook (PRESET=cpu by default) and build the HTML book (the main job)
#   make test        - lint + unit tests + the book at PRESET=smoke, nbval, browser check (what CI runs)
#   make unit        - the pytest suite alone
#   make demo        - a one-minute tour of the library on synthetic data
#   make bench       - the loss / calibration benchmark (prints a table)
#   make references  - both protocols (book/protocol.md): the paper arm and the tuned arm (tuning on two draws, then seeds 0-19 on synthetic data, 0-4 on Fashion-MNIST) and the size sweep, the references and claims.json; resumable; `python tools/reference_runs.py --dry-run --jobs 2` prints the runs, their estimated cost on a fresh run cache (about 20.6 h of process time, about 11 h of wall time in two processes, before grid extensions) and the split
#   make wheel-test  - build both wheels (avgk_lib, avgk_book), install them outside the repository and run a chapter from there (part of `make unit`)
#   make set-repo-url URL=https://github.com/OWNER/NAME - point the book, badges and install cells at another repository

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Readers may point this at a CPU-only or CUDA build; the default takes what pip resolves.
TORCH_PACKAGES ?= torch torchvision
STAMP := $(VENV)/.installed

PRESET ?= cpu
STAGE := _build/book
HTML := $(STAGE)/_build/html

.PHONY: setup book test unit book-check lint demo bench references wheel-test set-repo-url clean

setup: $(STAMP)

$(STAMP): pyproject.toml book/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PACKAGES)
	$(BIN)/python -m pip install --quiet -e ".[test,book]" -e ./book
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check avgk_lib book/avgk_book tests benchmarks tools
	$(BIN)/ruff format --check avgk_lib book/avgk_book tests benchmarks tools

book: $(STAMP)
	$(BIN)/python tools/run_notebooks.py --preset $(PRESET) --out $(STAGE)
	$(BIN)/jupyter-book build $(STAGE) --config book/_config.yml --toc book/_toc.yml -W -n --keep-going
	@echo "The book: $(HTML)/index.html"

test: lint unit book-check

unit: $(STAMP)
	$(BIN)/python -m pytest -q

book-check: $(STAMP)
	$(BIN)/nbstripout --verify notebooks/*.ipynb
	$(MAKE) book PRESET=smoke
	$(BIN)/python -m pytest -q -p no:cacheprovider -o addopts="" --nbval-lax $(STAGE)/notebooks
	$(BIN)/python tools/check_site.py $(HTML) --notebooks $(STAGE)/notebooks --screenshot .ci-artifacts/first_page.png $(if $(CI),--require,)

demo: $(STAMP)
	$(BIN)/python -m avgk_lib demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_losses.py

references: $(STAMP)
	$(BIN)/python tools/reference_runs.py --preset cpu --jobs 2

wheel-test: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_wheel_install.py

set-repo-url:
	@test -n "$(URL)" || { echo "usage: make set-repo-url URL=https://github.com/OWNER/NAME" >&2; exit 2; }
	$(PYTHON) tools/set_repo_url.py "$(URL)"

clean:
	rm -rf $(VENV) _build .pytest_cache
