.PHONY: install lint type test test-integration e2e all

install:
	pip install torch==2.13.0 && pip install -e ".[engine,gateway,workers,embedded-redis,dev]"

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
