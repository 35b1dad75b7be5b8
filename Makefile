# flatminima: every install step lives here, so a fresh clone on a fresh machine works.
#   make demo   install, then run the main job
#   make test   install, then run the test suite
#   make bench  install, then run the benchmarks (ratios against in-process baselines)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export OMP_NUM_THREADS ?= 2

.PHONY: install data demo test bench clean

install: $(STAMP) data

# torch is pinned to the CPU wheel (an unpinned torch pulls a multi-GB CUDA build). The editable install
# also builds the optional C extension (setup.py) in place, so a change to its source reinstalls too.
$(STAMP): pyproject.toml setup.py src/flatminima/_fastrand.c
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
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

test: install
	$(PY) -m pytest tests

bench: install
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) flatminima-runs .pytest_cache
