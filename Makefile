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

# The main job on the embedded default: a local Ray tier (one shard per disk, data under ./.raylsm),
# a quick replay of the packaged production trace through the SGLang adapter, the table and a plot,
# then down.
demo: venv
	$(BIN)/raylsm up --segment-mb 16
	$(BIN)/raylsm bench trace --quick --plot .raylsm/trace-replay.png --json .raylsm/trace-replay.json; \
	status=$$?; $(BIN)/raylsm down; exit $$status

test: venv
	$(BIN)/python -m pytest -q tests

bench: venv
	$(BIN)/raylsm bench store --json .raylsm/bench-store.json
	$(BIN)/raylsm bench tier --json .raylsm/bench-tier.json

clean:
	rm -rf $(VENV) .raylsm .pytest_cache
