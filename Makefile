# vaelab: `make train` installs and trains the default model; `make test` installs and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARGS ?=

# the real MNIST / Fashion-MNIST IDX files beside the project, when they are there
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/MNIST/raw),)
export VAELAB_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: install train test test-slow test-all lint format clean results bench gpu-check cluster-up cluster-down

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) train.py $(ARGS)

# two pytest-xdist workers: most tests wait on a subprocess's imports
test: install
	$(PY) -m pytest -n 2 -m "not slow" $(ARGS)

# the longer tests (DDP with 2 processes, Optuna/joblib/submitit sweeps, kill -9 and resume, torch.compile)
test-slow: install
	$(PY) -m pytest -m slow $(ARGS)

test-all: install
	$(PY) -m pytest $(ARGS)

# ruff's linter and its formatter (line length 120, pyproject.toml); `make format` applies the formatter
lint: install
	$(PY) -m ruff check src tests scripts train.py
	$(PY) -m ruff format --check src tests scripts train.py

format: install
	$(PY) -m ruff format src tests scripts train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info

# long trainings and evaluations for docs/results.md (not part of the tests)
RECIPES ?= cvae_mnist beta_vae_mnist cvae_fashion_mnist best_cpu_vae_mnist best_cpu_vae_fashion_mnist iwae_paper_vae_mnist iwae_paper_iwae_mnist iwae_paper_vae_fashion_mnist
# statically binarized data can be memorized: these recipes are scored on their best checkpoint on val/elbo
BEST_CKPT_RECIPES ?= static_vae_mnist
results: install
	$(PY) -m vaelab.classifier data=mnist
	$(PY) -m vaelab.classifier data=fashion_mnist
	$(PY) scripts/results.py --doc docs/results.md --block last $(RECIPES)
	$(if $(BEST_CKPT_RECIPES),$(PY) scripts/results.py --checkpoint best --out logs/results/best_checkpoint --doc docs/results.md --block best $(BEST_CKPT_RECIPES))

# speed: vaelab through Lightning vs a plain loop vs a torchvision DataLoader; NLL and start-up times
bench: install
	$(PY) scripts/bench.py --doc docs/benchmarks.md $(ARGS)

# on a machine with CUDA: a GPU training, vaelab-eval and the bench's GPU rows (without CUDA: one line)
gpu-check: install
	PY=$(PY) scripts/gpu_check.sh

# a real SLURM cluster on this machine (root; Debian's packages): then export SLURM_CONF as it says
cluster-up:
	scripts/slurm/local-cluster.sh up 2

cluster-down:
	scripts/slurm/local-cluster.sh down
