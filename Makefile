# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SGLANG_VERSION := 0.5.23
# NOTE: torch 2.13.0 is a CPU build; a newer torch from PyPI is a multi-GB CUDA build.
TORCH_SPEC := torch==2.13.0
# The torchvision release built for TORCH_SPEC (change them together). SGLang's host pools import it;
# it lives outside site-packages because on a CPU torch its import fails unless two op schemas are
# declared first, and transformers imports it from `import sglang` wherever it is installed
# (docs/install.md). Only tests/sglang/test_real_host_pools.py puts it on sys.path.
TORCHVISION_SPEC := torchvision==0.28.0
TORCHVISION_DIR := $(VENV)/cpu-torchvision

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[ray,sglang,bench,test]" "$(TORCH_SPEC)"
	# sglang's storage classes and host pools without its GPU stack (see docs/install.md); they import triton.
	$(BIN)/pip install --quiet --no-deps "sglang==$(SGLANG_VERSION)" triton
	$(BIN)/pip install --quiet --no-deps --upgrade --target "$(TORCHVISION_DIR)" "$(TORCHVISION_SPEC)"
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

# The raylsm wheel, the one way raylsm gets onto Ray nodes (docs/install.md): built in a small venv
# of its own (pip and setuptools only), into dist/ (older raylsm wheels removed first: the cluster
# files and the Dockerfile install dist/raylsm-*.whl).
DIST_VENV := build/dist-venv
# The images of cluster/kuberay-raycluster.yaml: the pinned Ray on the pinned Python.
RAY_VERSION := 2.60.0
RAY_PYTHON := py311
IMAGE_REPO ?= raylsm
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: dist image image-gpu check-cluster

dist:
	test -x $(DIST_VENV)/bin/pip || $(PYTHON) -m venv $(DIST_VENV)
	rm -rf dist/raylsm-*.whl build/lib build/bdist.*
	$(DIST_VENV)/bin/pip wheel --quiet --no-deps --wheel-dir dist .
	@ls dist/raylsm-*.whl

image: dist
	docker build --build-arg RAY_IMAGE=rayproject/ray:$(RAY_VERSION)-$(RAY_PYTHON) \
	  --build-arg RAY_VERSION=$(RAY_VERSION) -t $(IMAGE_REPO):$(VERSION) .

image-gpu: dist
	docker build --build-arg RAY_IMAGE=rayproject/ray:$(RAY_VERSION)-$(RAY_PYTHON)-gpu \
	  --build-arg RAY_VERSION=$(RAY_VERSION) --build-arg SGLANG_VERSION=$(SGLANG_VERSION) \
	  -t $(IMAGE_REPO)-sglang:$(VERSION) .

# The cluster files against the schemas of the tools that read them, and every raylsm command the
# files and docs use against the command line (also part of `make test`).
check-cluster: venv
	$(BIN)/python -m pytest -q tests/unit/test_cluster_files.py

clean:
	rm -rf $(VENV) .raylsm .pytest_cache
