# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/example.yaml

.PHONY: install run test fuzz bench bench-audit bench-ratelimit bench-transports lint clean redis-server bench-tools \
	constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The tests start their own redis-server on a free port; bring the binary when it is missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing Debian's redis-server package"; \
	  (apt-get install -y -q redis-server >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null)); }
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server is still missing" >&2; exit 1; }

run: install
	$(BIN)/python -m gateway demo --config $(CONFIG)

test: install redis-server
	$(BIN)/python -m pytest -q

# The property tests (hypothesis) with 5000 examples each instead of make test's 100; what fails is kept in
# .hypothesis/ and tried first next time.
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m property

bench-tools:
	@for b in wrk nginx haproxy; do command -v $$b >/dev/null 2>&1 || NEED=1; done; \
	if [ -n "$$NEED" ]; then apt-get install -y -q wrk nginx-light haproxy >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q wrk nginx-light haproxy >/dev/null); fi

bench: install bench-tools
	$(BIN)/python benchmarks/proxy_bench.py

# The Redis audit sink: events/s into a local Redis, and the proxy's req/s with the sink on vs off.
bench-audit: install bench-tools redis-server
	$(BIN)/python benchmarks/audit_bench.py

# What a route's rate_limit costs the proxy, counted in memory and in Redis.
bench-ratelimit: install bench-tools redis-server
	$(BIN)/python benchmarks/ratelimit_bench.py

# The upstream-client comparison behind gateway/proxy/forward.py (about 8 minutes).
bench-transports: install bench-tools
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/transports.py

# ruff for style and bugs, mypy --strict (pyproject.toml [tool.mypy]) for the types.
lint: install
	$(BIN)/ruff check gateway tests benchmarks
	$(BIN)/mypy

# constraints.txt: the image's pinned runtime packages, resolved in a fresh virtualenv from pyproject.toml.
constraints:
	rm -rf .tollbooth/constraints-venv
	$(PYTHON) -m venv .tollbooth/constraints-venv
	.tollbooth/constraints-venv/bin/pip install --quiet .
	{ sed -n '/^#/p' constraints.txt; .tollbooth/constraints-venv/bin/pip freeze --exclude tollbooth; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .tollbooth/constraints-venv

clean:
	rm -rf $(VENV) .tollbooth .pytest_cache .hypothesis
