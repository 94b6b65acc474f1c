# Set-up and main entry points. `make demo` and `make test` each create the virtual
# environment on first use: torch==2.13.0 (CPU wheel) first, then the package.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint format bench clean viewer-bundle

NIIVUE_VERSION := 0.69.0
NIIVUE_BUNDLE := src/lesionuq/export/_vendor/niivue.umd.js

# The interactive report viewer needs the NiiVue bundle from npm (git-ignored); setup
# fetches it only when npm exists, and reports keep static pictures without it.
setup: $(STAMP)
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "npm not found: skipping the NiiVue viewer bundle (make viewer-bundle)"; \
	elif ! $(MAKE) --no-print-directory viewer-bundle; then \
		rm -rf .niivue-tmp; \
		echo "could not fetch the NiiVue viewer bundle (offline?): reports keep static pictures"; \
	fi

viewer-bundle: $(NIIVUE_BUNDLE)

$(NIIVUE_BUNDLE):
	rm -rf .niivue-tmp && mkdir -p .niivue-tmp $(dir $(NIIVUE_BUNDLE))
	cd .niivue-tmp && npm pack --silent @niivue/niivue@$(NIIVUE_VERSION) >/dev/null
	tar -xzf .niivue-tmp/niivue-niivue-$(NIIVUE_VERSION).tgz -C .niivue-tmp package/dist/niivue.umd.js
	cp .niivue-tmp/package/dist/niivue.umd.js $@
	rm -rf .niivue-tmp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]" torch==2.13.0  # keep the CPU wheel: nnunetv2 pulls timm -> torchvision, whose newest needs a newer (CUDA) torch
	touch $(STAMP)

demo: setup
	$(BIN)/lesionuq demo --out demo

# `make test` (and CI) runs everything: lint, the layer rule (import-linter, contracts in
# pyproject.toml), types, and every test. `make test-fast` skips the tests marked slow
# (the whole-protocol run, torchrun, Dask clusters, training): under a minute.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy src
	$(BIN)/pytest -q -n auto --dist loadfile --durations=15  # one worker per core, a test file per worker; the 15 slowest, to watch the 10-minute CI budget

test-fast: $(STAMP)
	$(BIN)/pytest -q -n auto --dist loadfile -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/mc_sampling.py
	$(BIN)/python benchmarks/graphs.py
	$(BIN)/python benchmarks/phantom.py

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache .mypy_cache
