# Marcador: `make run` starts the embedded demo; `make test` provisions real services and runs everything.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ASTERISK_PORT ?= 5038

.PHONY: run test bench lint asterisk asterisk-stop clean deps-system

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/marcador run

# System packages the integration tests need (Debian): debootstrap builds the Asterisk root, redis-server, chromium.
deps-system:
	@if ! command -v debootstrap >/dev/null || ! command -v redis-server >/dev/null || ! command -v chromium >/dev/null; then \
	  echo "installing system packages for the integration tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap redis-server chromium >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

test: $(STAMP) deps-system lint
	bash asterisk-docker/provision.sh build
	$(BIN)/pytest -q

bench: $(STAMP)
	@for b in bench/[a-z]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

asterisk: $(STAMP)
	bash asterisk-docker/provision.sh build
	bash asterisk-docker/provision.sh start --port $(ASTERISK_PORT) --secret marcador-dev --rundir build/asterisk

asterisk-stop:
	bash asterisk-docker/provision.sh stop --rundir build/asterisk

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
