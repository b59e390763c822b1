# fednas: make install | make run | make test
# torch is pinned here (not in pyproject) to the CPU wheel these machines carry;
# pyproject keeps a range so other platforms can bring their own build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
PIP    := $(PY) -m pip install --disable-pip-version-check --quiet

.PHONY: install install-test run test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH)"
	$(PIP) -e .
	touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]'
	touch $@

run: install
	$(VENV)/bin/fednas search studies/quickstart.toml

test: install-test
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

test-fast: install-test
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) studies/*.db studies/*.artifacts
