# Two commands do everything: `make demo` runs the loop, `make test` runs the tests.
# Both create .venv on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, exactly this version: it is the local CPU build; anything that
	# resolves torch on its own would pull several GB of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loopline demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/ftrl_throughput.py
	$(BIN)/python bench/quantize.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/freshness.py --skip-recovery

clean:
	rm -rf $(VENV) out .pytest_cache
