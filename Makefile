# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SGLANG_VERSION := 0.5.23
# NOTE: torch 2.13.0 is a CPU build; a newer torch from PyPI is a multi-GB CUDA build.
TORCH_SPEC := torch==2.13.0

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[ray,sglang,bench,test]" "$(TORCH_SPEC)"
	# sglang's storage classes without its GPU stack (see docs/install.md); they import triton.
	$(BIN)/pip install --quiet --no-deps "sglang==$(SGLANG_VERSION)" triton
	touch $(STAMP)

demo: venv
	$(BIN)/raylsm bench store --quick

test: venv
	$(BIN)/python -m pytest -q tests

bench: venv
	$(BIN)/raylsm bench store

clean:
	rm -rf $(VENV) .raylsm .pytest_cache
