# The two commands of the README:
#   make demo   run the main job on the embedded defaults (installs what it needs)
#   make test   run every check CI runs (installs what it needs)
# Everything lands in .venv/ (Python 3.11: MXNet 1.9.1 has no build for newer Pythons).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo crd clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (MXNet 1.9.1); set PYTHON=/path/to/python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m aidi.api.crd --check crds/trainjobs.aidi.io.yaml

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/traincli validate -f examples/train_job.yaml -o yaml

crd: $(STAMP)
	$(BIN)/python -m aidi.api.crd -o crds/trainjobs.aidi.io.yaml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
