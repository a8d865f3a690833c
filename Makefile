# make demo   create .venv (first time), install loraplug and its plugins, train the quickstart recipe
# make test   the checks (make lint), then the whole test suite (what .ci/run calls)
# make lint   ruff check, ruff format --check and mypy on loraplug/: what make test runs first
# make bench  the benchmarks behind docs/performance.md
# make docs   regenerate the generated tables in docs/recipes.md and the hook reference in docs/hooks.md
# Each target is idempotent: the install step reruns only when a pyproject.toml changed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.loraplug-installed
PLUGIN_PROJECTS := $(sort $(wildcard plugins/*/pyproject.toml))
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install chromium compiler demo lint test bench docs clean-venv

install: $(STAMP) chromium compiler

# The studio's browser tests (plugins/studio/tests) drive Debian's Chromium through Playwright; no browser
# is ever downloaded. As root it is installed with apt-get; otherwise make says how (the tests skip loudly).
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (apt-get) for the studio's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "note: the studio's browser tests need Chromium: sudo apt-get install -y chromium (skipped until then)"; \
	fi

# DeepSpeed on CPUs (tests/test_deepspeed.py) compiles its shared-memory all-reduce on first use.
compiler:
	@if command -v g++ >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing g++ (apt-get) for DeepSpeed's CPU collectives"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++; \
	else \
		echo "note: DeepSpeed on CPUs needs a C++ compiler: sudo apt-get install -y g++"; \
	fi

$(STAMP): pyproject.toml $(PLUGIN_PROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# setuptools prints an informational "Editable installation" notice per package: not for newcomers.
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet -e ".[test]" $(foreach p,$(PLUGIN_PROJECTS),-e $(dir $(p)))
	touch $(STAMP)

demo: install
	$(VENV)/bin/loraplug run recipes/quickstart.toml --overwrite

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy loraplug

test: lint
	$(PY) -m pytest -n 2 -q

bench: install
	$(PY) bench/cli_startup.py
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/llm_throughput.py --out runs/bench/llm_throughput.json
	$(PY) bench/sd_caching.py tiny --json bench/results/sd_caching_tiny.json

docs: install
	$(PY) tools/update_recipes_doc.py
	$(PY) tools/update_hooks_doc.py

clean-venv:
	rm -rf $(VENV)
