# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOME_DIR ?= ./coverwatch-home
# This machine's torch pair (a CUDA build that also runs on CPU). Pinned here, not in pyproject.toml,
# because every host needs the build matching its own CUDA. A mismatched pair is what gives
# torchvision's NotImplementedError; `coverwatch doctor` checks for it.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

# Ultralytics must never try to download or pip-install at run time in tests and CI.
export YOLO_OFFLINE ?= 1
export YOLO_AUTOINSTALL ?= false
export YOLO_CONFIG_DIR ?= $(CURDIR)/.yolo-config

.PHONY: install install-dev run test bench clean

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

test: install-dev
	@mkdir -p $(YOLO_CONFIG_DIR)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install-dev
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .yolo-config
