# Two entry points, each installing what it needs into ./.venv first:
#   make demo  -> pretrained EfficientNet classifying photos, and its feature pyramid (runtime deps + demo extra)
#   make test  -> lint + the whole test suite (offline, CPU; the test extras)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test install hub-configs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[demo]'
	touch $(DEMO_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/effnet-zoo demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n auto

hub-configs: $(STAMP)
	$(BIN)/python tools/gen_hub_configs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
