# hutong: `make demo` to run the demo city, `make test` to run the whole suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RESIDENTS ?= 10000
HUTONG_PORT ?= 8000
HOUSING_PORT ?= 8001
export HUTONG_HOUSING_PORT = $(HOUSING_PORT)

.PHONY: demo test lint venv demo-data bench clean e2e-deps bench-deps loadtest

# The virtual environment is rebuilt when pyproject.toml changes.
$(BIN)/hutong: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/hutong

# The city is rebuilt when its generator changes or when RESIDENTS differs from the size it was
# built with: demo/data/.residents-N records that size (`make demo RESIDENTS=2000` after a
# default build serves a city of 2,000, and plain `make demo` afterwards one of 10,000 again).
RESIDENTS_STAMP := demo/data/.residents-$(RESIDENTS)

$(RESIDENTS_STAMP):
	@mkdir -p demo/data
	@rm -f demo/data/.residents-*
	@touch $@

demo/data/showcase.json: $(BIN)/hutong demo/build.py demo/schema.py $(RESIDENTS_STAMP)
	$(BIN)/hutong demo build --residents $(RESIDENTS)

demo-data: demo/data/showcase.json

demo: venv demo-data
	HUTONG_PORT=$(HUTONG_PORT) $(BIN)/hutong demo serve

test: venv e2e-deps
	$(BIN)/ruff check .
	$(BIN)/pytest

# The console's end-to-end tests drive Debian's chromium through Playwright (no browser download),
# with a CJK font so that the screenshots show the demo's Chinese names.
e2e-deps:
	@{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } && \
	  { [ -n "$$(fc-list :lang=zh 2>/dev/null)" ] || ! command -v apt-get >/dev/null 2>&1; } || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium and a CJK font for the console tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null; \
	  else echo "chromium not found and cannot be installed here: the console's browser tests will skip"; fi

lint: venv
	$(BIN)/ruff check .

# wrk (a C load generator) drives the HTTP throughput measurements: a Python one would spend more CPU
# per request than the gateway on a two-core machine. Without it the suite falls back to httpx.
bench-deps:
	@command -v wrk >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's wrk for the HTTP load measurements"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk not found and cannot be installed here: HTTP load comes from httpx clients instead"; fi

bench: venv bench-deps
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

# Sustained load for minutes (bench/loadtest.py): rate held, p50/p99, no error, every answered
# request recorded, no memory growth. LOADTEST_ARGS="--minutes 10 --backend postgresql" for more.
loadtest: venv bench-deps
	$(BIN)/python -m bench.loadtest $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) demo/data demo/run artifacts
