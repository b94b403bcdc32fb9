# Two commands do everything: `make demo` runs the loop, `make test` runs the tests.
# Both create .venv on first use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean chromium promtool alerts

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, exactly this version: it is the local CPU build; anything that
	# resolves torch on its own would pull several GB of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loopline demo

test: $(STAMP) chromium alerts
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

# Debian's Chromium and its chromedriver, for tests/integration/test_browser.py: installed when missing, as
# root or through password-less sudo with apt-get. Elsewhere this only warns, and that test fails saying why.
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing Debian's chromium and chromium-driver for the browser test"; \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium chromium-driver fonts-liberation >/dev/null; \
	else \
		echo "warning: chromium and chromedriver are missing and cannot be installed here (needs apt-get and" \
			"root): tests/integration/test_browser.py will fail; install Debian's chromium and chromium-driver" >&2; \
	fi

# promtool, from Debian's prometheus package (which also brings the Prometheus server; only promtool is used),
# for `make alerts`: installed when missing, as chromium is. Elsewhere this only warns and the check is skipped.
promtool:
	@if command -v promtool >/dev/null; then :; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing Debian's prometheus for promtool"; \
		{ $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus >/dev/null; } || echo "warning: installing prometheus failed" >&2; \
	else \
		echo "warning: promtool is missing and cannot be installed here (needs apt-get and root):" \
			"infra/prometheus/ will not be checked; install Debian's prometheus" >&2; \
	fi

# The alert rules and the scrape config parse. tests/code/test_operator_view.py checks the metric names and,
# with promtool, that each alert fires when it should.
alerts: promtool
	@if command -v promtool >/dev/null; then \
		promtool check rules infra/prometheus/alerts.yml && \
		promtool check config --syntax-only infra/prometheus/prometheus.yml; \
	else \
		echo "warning: promtool is missing: infra/prometheus/alerts.yml not checked" >&2; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/ftrl_throughput.py
	$(BIN)/python bench/quantize.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/freshness.py --skip-recovery
	$(BIN)/python bench/reliability.py

clean:
	rm -rf $(VENV) out .pytest_cache
