# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOME_DIR ?= ./coverwatch-home
# This machine's torch pair (a CUDA build that also runs on CPU). Pinned here, not in pyproject.toml,
# because every host needs the build matching its own CUDA. A mismatched pair is what gives
# torchvision's NotImplementedError; `coverwatch doctor` checks for it.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

# Ultralytics never pip-installs at run time; its settings live in the project, not in ~/.config.
export YOLO_AUTOINSTALL ?= false
export YOLO_CONFIG_DIR ?= $(CURDIR)/.yolo-config
# Tests and benchmarks never reach the network. `make run` may: yolo11n.pt is downloaded once when online.
test bench: export YOLO_OFFLINE ?= 1

.PHONY: install install-dev run test test-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools

$(VENV)/.torch-installed: | $(BIN)/python
	$(BIN)/pip install $(TORCH_PINS)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch-installed
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	@mkdir -p $(YOLO_CONFIG_DIR)
	@test -f $(HOME_DIR)/coverwatch.yaml || $(BIN)/coverwatch init $(HOME_DIR)
	$(BIN)/coverwatch -c $(HOME_DIR)/coverwatch.yaml run

# The whole suite on SQLite, then the storage and watcher suites again on a throwaway PostgreSQL server.
test: install-dev test-deps
	@mkdir -p $(YOLO_CONFIG_DIR)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	COVERWATCH_TEST_DB=postgres $(BIN)/python -m pytest -q tests/storage tests/watcher $(PYTEST_ARGS)

# Programs some tests drive, from Debian when missing: LibreOffice (the report opens in a real spreadsheet
# program), poppler's pdftotext and pdfimages (what its PDF export shows, page by page), PostgreSQL (the
# multi-worker suites), systemd-analyze (the unit file verifies). Where apt cannot run (not root, offline, not
# Debian) the tests that need them skip and say why.
TEST_PROGRAMS = soffice:libreoffice-calc pdftotext:poppler-utils initdb:postgresql systemd-analyze:systemd
test-deps:
	@missing=""; for pair in $(TEST_PROGRAMS); do prog=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$prog >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/$$prog >/dev/null 2>&1 \
	  || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  ( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $$missing fonts-noto-cjk) >/dev/null 2>&1 && echo "installed:$$missing" ) \
	  || echo "could not install:$$missing (the tests that need them will skip)"; fi

bench: install-dev
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/label_check.py

clean:
	rm -rf $(VENV) .pytest_cache .yolo-config
