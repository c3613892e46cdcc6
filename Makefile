# Two entry points, each installing what it needs into ./.venv first:
#   make demo  -> the compound-scaled design of EfficientNet-B0 (offline)
#   make test  -> lint + the whole test suite (offline, CPU)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install hub-configs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/effnet-zoo summary effnet_v1_b0

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n auto

hub-configs: $(STAMP)
	$(BIN)/python tools/gen_hub_configs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
