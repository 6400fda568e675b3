# Two commands: `make run` (the console on embedded defaults) and `make test`.
# Both create .venv/ on first use and refresh it when pyproject.toml changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench demo clean-data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py runconsole

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy agentmatic agentmatic_web runs approvals checkpoints

test: lint
	$(BIN)/python -m pytest -n auto --dist loadgroup -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m bench

clean-data:
	rm -rf .data
