# Two commands: `make run` (the console on embedded defaults) and `make test`.
# Both create .venv/ on first use and refresh it when pyproject.toml changes;
# `run` installs what the console needs, `test` adds the test and lint tools.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ADDR ?= 127.0.0.1:8000

.PHONY: run test lint bench clean-data

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py runconsole $(ADDR)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy agentmatic agentmatic_web runs approvals checkpoints

test: lint
	$(BIN)/python -m pytest -n auto --dist loadgroup -q -p no:cacheprovider

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

clean-data:
	rm -rf .data
