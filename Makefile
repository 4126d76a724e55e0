# sluice: `make demo` runs the whole thing locally; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test lint train bench kafka-start kafka-stop clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

demo: setup
	docker/demo

test: setup kafka-start
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup kafka-start
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m bench.latency

train: setup
	$(PY) -m models.train

kafka-start:
	docker/kafka-local start

kafka-stop:
	docker/kafka-local stop

clean:
	rm -rf .demo sluice-data .pytest_cache .mypy_cache .ruff_cache
