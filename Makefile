# Quick start (README): `make demo` runs the main job, `make test` runs the tests.
# Each target first sets up .venv (Python packages + the compiled extension) when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml requirements-dev.txt

.PHONY: demo test bench bench-pytest install clean

$(STAMP): $(SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	@$(PY) -c "import decaf_kernels, json; print(json.dumps(decaf_kernels.backend_info()['extension']))"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m bench.demo

bench: $(STAMP)
	$(PY) -m bench.compare --cases tiny,small

bench-pytest: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info decaf_kernels/*.so
