# flatminima: every install step lives here, so a fresh clone on a fresh machine works.
#   make demo       install, then run the main job
#   make test       install, then lint (ruff, import-linter layers), build the docs, run the test suite
#   make docs       build the documentation site (warnings are errors) into site/
#   make bench      install with the benchmark peers, then run the benchmarks (ratios against in-process baselines)
#   make reproduce  run every study at its default scale, render the reports, regenerate the README's claims table

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch pinned to the CPU wheel for every install (constraints.txt); the package accepts a range
PIP    := $(VENV)/bin/pip install -q -c constraints.txt
STAMP  := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export OMP_NUM_THREADS ?= 2

.PHONY: install data demo lint docs test bench reproduce clean

install: $(STAMP) data

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,docs]'
	touch $(STAMP)

# Debian packages: dataset-fashion-mnist (the full 60k/10k IDX files), fortunes (English text for the
# character-level LSTM study), chromium + chromium-driver (the report test opens pages in headless Chromium).
# Installed when running as root and missing; otherwise the tests that need them skip.
DEBS := dataset-fashion-mnist fortunes chromium chromium-driver
data:
	@missing=""; \
	[ -f $(FASHION) ] || [ -n "$$FLATMINIMA_DATA" ] || missing="$$missing dataset-fashion-mnist"; \
	[ -d /usr/share/games/fortunes ] || missing="$$missing fortunes"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing); tests that need them skip"; \
	  fi; \
	fi

demo: install
	$(PY) -m flatminima.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir site

test: install lint docs
	$(PY) -m pytest tests

bench: install
	$(PIP) -e '.[test,docs,bench]'
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# every study at its default scale, two worker processes of one thread each; a killed run resumes (finished
# points are kept in the store); then the HTML reports (reports/), the records (results/) and the README table
# (STUDIES=... runs a subset)
REPRO_STORE ?= reproduce-runs
reproduce: install
	@studies="$(STUDIES)"; [ -n "$$studies" ] || studies=$$($(VENV)/bin/flatminima study list | cut -d' ' -f1); \
	for s in $$studies; do echo "== study $$s"; \
	  $(VENV)/bin/flatminima study run $$s --workers 2 --threads 1 --store $(REPRO_STORE) -q || exit 1; done
	$(VENV)/bin/flatminima report --store $(REPRO_STORE) --out reports --readme README.md

clean:
	rm -rf $(VENV) flatminima-runs site .pytest_cache
