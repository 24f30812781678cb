# eventual-nb developer entry points. Every target sets up .venv itself.
#
#   make test   lint, Debian's chromium if missing (browser tests), then the test suite (PYTEST_ARGS="-k foo -x")
#   make lint   ruff check + ruff format --check + mypy + lint-imports (the layers, pyproject.toml)
#   make bench  side-by-side benchmarks (python -m benchmarks)
#   make lab    JupyterLab with the Eventual kernel, getting-started notebook open
#   make demo   the bank-account tutorial run headless, then exported to build/bank-account
#   make clean  remove the venv, caches and build output

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

# The stamp is the real target: the venv is rebuilt when pyproject.toml changes, not on every run.
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

LINT_PATHS := eventual_nb kernel_ext exporter tests benchmarks

.PHONY: venv .venv lab test lint browser bench demo clean

venv .venv: $(DEV_STAMP)

$(DEV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

$(BENCH_STAMP): $(DEV_STAMP)
	$(BIN)/pip install -e '.[dev,bench]'
	touch $@

lint: $(DEV_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy eventual_nb kernel_ext exporter
	$(BIN)/lint-imports --no-logo

# Debian's chromium for the browser tests, installed when it is missing and apt-get is usable; without it
# the run names the browser tests it could not run (tests/conftest.py).
browser:
	@.ci/chromium

test: lint browser
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks

# JupyterLab on 127.0.0.1 with the "Eventual (Python 3)" kernel installed into the venv (never into the
# user's or system kernels), serving notebooks/. The lab's default URL is the getting-started notebook, so
# the URL it prints (and opens) is .../lab/tree/getting-started.ipynb?token=..., not the launcher's.
# LAB_ARGS passes more options (e.g. LAB_ARGS=--no-browser).
LAB_ARGS ?=
LAB_NOTEBOOK ?= getting-started.ipynb
lab: $(DEV_STAMP)
	$(BIN)/eventual-nb kernel install --sys-prefix
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks \
		--LabApp.default_url=/lab/tree/$(LAB_NOTEBOOK) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# The tutorial run headless on the local runtime (in a temporary working directory: no .eventual/ in the
# repository), its executed copy kept in build/, then its service exported as a package.
DEMO_NOTEBOOK ?= notebooks/bank-account.ipynb
DEMO_NAME := $(basename $(notdir $(DEMO_NOTEBOOK)))
demo: $(DEV_STAMP)
	mkdir -p build
	$(BIN)/eventual-nb run $(DEMO_NOTEBOOK) -p runtime local -o build/$(DEMO_NAME).out.ipynb
	$(BIN)/eventual-nb export $(DEMO_NOTEBOOK) -o build/$(DEMO_NAME)

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache .grimp_cache
	rm -rf *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
