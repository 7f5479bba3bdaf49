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
# (docs/install.md). Only raylsm/bench/cpu_torchvision.py puts it on sys.path (tests of SGLang's own
# classes, the Mooncake bench system).
TORCHVISION_SPEC := torchvision==0.28.0
TORCHVISION_DIR := $(VENV)/cpu-torchvision

.PHONY: venv demo test bench bench-deps e2e clean

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

# Benchmark peers (docs/install.md, "Benchmark peers"): Mooncake Store, the `mooncake_store` system
# of the trace and fleet benches. pip puts its client and `mooncake_master` into the venv (the pin of
# pyproject's `mooncake` extra: change them together; not `-e .[mooncake]`, which would reinstall
# raylsm under running benchmarks); the client's native library needs libibverbs and librdmacm even
# over TCP, and libnuma: apt installs them when missing (as root, else with sudo). Ends by checking
# that it runs.
MOONCAKE_SPEC := mooncake-transfer-engine-non-cuda==0.3.13.post1
BENCH_APT_PACKAGES := libibverbs1 librdmacm1 libnuma1
BENCH_LIBS := libibverbs.so.1 librdmacm.so.1 libnuma.so.1

bench-deps: venv
	@missing=""; for lib in $(BENCH_LIBS); do \
	  { ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q "$$lib" || missing="$$missing $$lib"; \
	done; \
	if [ -n "$$missing" ]; then \
	  command -v apt-get >/dev/null || { echo "bench-deps: missing$$missing; install $(BENCH_APT_PACKAGES) (or your distribution's rdma-core and numactl libraries)"; exit 1; }; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "bench-deps: missing$$missing: apt-get install $(BENCH_APT_PACKAGES)"; \
	  $$sudo apt-get update && $$sudo apt-get install -y $(BENCH_APT_PACKAGES); \
	fi
	$(BIN)/pip install --quiet "$(MOONCAKE_SPEC)"
	$(BIN)/python -c "from raylsm.bench.mooncake import mooncake_unavailable; reason = mooncake_unavailable(); \
	  print('bench-deps:', reason or 'Mooncake Store runs here'); raise SystemExit(1 if reason else 0)"

# The real-SGLang end-to-end check, on a GPU machine (docs/e2e.md): a venv of its own under OUT
# (default .raylsm/e2e) with SGLang 0.5.23 and its CUDA stack, a local raylsm tier, SGLang servers with
# random-weight models; results in OUT/e2e.json. Not part of `make test` (its CPU tests are).
e2e:
	OUT="$${OUT:-.raylsm/e2e}" PYTHON="$(PYTHON)" bash tests/e2e/sglang_server.sh

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

# The cluster files against the schemas of the tools that read them, every raylsm command the
# files and docs use against the command line, and every metric the dashboard, the alerts and
# docs/deploy.md name against the metrics raylsm exports (also part of `make test`).
check-cluster: venv
	$(BIN)/python -m pytest -q tests/unit/test_cluster_files.py

clean:
	rm -rf $(VENV) .raylsm .pytest_cache
