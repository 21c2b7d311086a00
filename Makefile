# Both targets build .venv themselves, so they work on a fresh clone.
# torch is pinned: a CPU build of 2.13.0 lies on the CI/dev machines' disk; an
# unpinned `pip install torch` would download a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,tb]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: install
	$(PY) -m muonkit demo

clean:
	rm -rf $(VENV) runs
