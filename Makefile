# Two commands: `make up` (set up, then run the local platform) and `make test` (set up, then the suite).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT     = DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: setup system-packages up test test-fast check bench clean

system-packages:
	@missing=""; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
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

# Unit tests on two workers; the end-to-end tests one at a time (each starts a whole platform on this machine).
test: check
	url=$$(./scripts/postgres-for-tests.sh) || exit 1; \
	export BALLAST_TEST_PG_URL=$$url BALLAST_REQUIRE_PG=1; \
	$(BIN)/pytest -m "not e2e" -n 2 && $(BIN)/pytest -m e2e

test-fast: setup
	$(BIN)/pytest -m "not e2e" -n 2

bench: setup
	$(BIN)/python benchmarks/apply_to_healthy.py
	$(BIN)/python benchmarks/api_latency.py
	$(BIN)/python benchmarks/release_groups.py
	$(BIN)/python benchmarks/dataplane.py
	$(BIN)/python benchmarks/lossless_release.py

clean:
	rm -rf $(VENV) .ballast .pytest_cache .hypothesis
