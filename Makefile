# Two commands: `make up` (set up, then run the local platform) and `make test` (set up, then the suite).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT     = DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: setup system-packages test-packages up test test-fast check bench clean

system-packages:
	@missing=""; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing="$$missing nftables"; \
	$(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; $(APT) update -qq && $(APT) install -y -qq $$missing; fi

$(BIN)/ballast: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: system-packages $(BIN)/ballast

up: setup
	$(BIN)/ballast up

check: setup
	$(BIN)/ruff check src tests --select F,E9
	$(BIN)/mypy src/ballast
	$(BIN)/lint-imports

# A Prometheus binary for the verification test (it runs its own, on a free port): Debian's package starts a
# system service on install, which the tests do not need.
test-packages:
	@if ! command -v prometheus >/dev/null 2>&1; then \
	  echo "installing: prometheus"; $(APT) update -qq && $(APT) install -y -qq --no-install-recommends prometheus; \
	  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now prometheus || true; fi; \
	fi

# Unit tests on two workers; the end-to-end tests one at a time (each starts a whole platform on this machine).
test: check test-packages
	url=$$(./scripts/postgres-for-tests.sh) || exit 1; \
	export BALLAST_TEST_PG_URL=$$url BALLAST_REQUIRE_PG=1 BALLAST_REQUIRE_PROMETHEUS=1; \
	$(BIN)/pytest -m "not e2e" -n 2 && $(BIN)/pytest -m e2e

test-fast: setup
	$(BIN)/pytest -m "not e2e" -n 2

bench: setup
	$(BIN)/python benchmarks/apply_to_healthy.py
	$(BIN)/python benchmarks/api_latency.py
	$(BIN)/python benchmarks/release_groups.py
	$(BIN)/python benchmarks/dataplane.py
	$(BIN)/python benchmarks/lossless_release.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/traffic_rules.py

clean:
	rm -rf $(VENV) .ballast .pytest_cache .hypothesis
