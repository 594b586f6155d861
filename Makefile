# hutong: `make demo` to run the demo city, `make test` to run the whole suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RESIDENTS ?= 10000
HUTONG_PORT ?= 8000
HOUSING_PORT ?= 8001
export HUTONG_HOUSING_PORT = $(HOUSING_PORT)

.PHONY: demo test lint venv demo-data bench clean

# The virtual environment is rebuilt when pyproject.toml changes.
$(BIN)/hutong: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/hutong

demo/data/showcase.json: $(BIN)/hutong demo/build.py demo/schema.py
	$(BIN)/hutong demo build --residents $(RESIDENTS)

demo-data: demo/data/showcase.json

demo: venv demo-data
	HUTONG_PORT=$(HUTONG_PORT) $(BIN)/hutong demo serve

test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python -m bench.federation
	$(BIN)/python -m bench.decisions
	$(BIN)/python -m bench.audit_requests

clean:
	rm -rf $(VENV) demo/data demo/run artifacts
