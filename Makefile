# Every target creates the environment it needs; nothing relies on what the machine already has.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

# The runtime packages at the versions they were tested with (deploy/constraints.txt), as the image gets
# them: a fresh machine does not pick up a release made since.
$(STAMP): pyproject.toml deploy/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' -c deploy/constraints.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m raymerge.demo

test: $(STAMP)
	$(BIN)/ruff check raymerge tests bench
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check raymerge tests bench
	$(BIN)/ruff format --check raymerge tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/text.py
	$(BIN)/python bench/webdataset.py
	$(BIN)/python bench/lerobot.py
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) demo-data .pytest_cache
