# Everything a newcomer or CI needs: each target creates the virtual environment when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/bandit-router serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check bandit_router simulator tests benchmarks experiments tools
	$(BIN)/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

WAL_DURATION ?= 600

bench: $(STAMP)  # WAL_DURATION=60 make bench: a shorter sustained-write run (bench_wal)
	$(BIN)/python -m benchmarks.run --out benchmarks/results --wal-duration $(WAL_DURATION)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
