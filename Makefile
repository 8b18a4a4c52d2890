# Quick start (README): `make demo` runs the main job, `make test` runs the tests.
# Each target first sets up .venv (Python packages + the compiled extension) when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml requirements-dev.txt

WORDNET ?= /usr/share/wordnet/data.noun

.PHONY: demo test bench bench-pytest kernels-demo install wordnet clean

$(STAMP): $(SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	@$(PY) -c "import decaf_kernels, json; print(json.dumps(decaf_kernels.backend_info()['extension']))"
	@touch $(STAMP)

install: $(STAMP)

# Debian's wordnet-base holds the built-in task's data (WordNet 3.0 noun glosses). Installed when missing and we are
# root; otherwise the demo stops with a message and the test that needs it is skipped with its reason.
wordnet:
	@if [ -f "$(WORDNET)" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's wordnet-base (the built-in task's data)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q wordnet-base >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q wordnet-base >/dev/null; }; \
	else \
		echo "$(WORDNET) is missing: install Debian's wordnet-base (sudo apt-get install wordnet-base) or run"; \
		echo "make demo WORDNET=/path/to/WordNet-3.0/dict/data.noun"; \
	fi

test: $(STAMP)
	@$(MAKE) --no-print-directory wordnet || true
	$(PY) -m pytest -q tests

# The main job: DeCAF vs DLoRA vs local vs FedAvg-LoRA on the built-in task (8 agents, ring, Dirichlet(0.5)).
demo: $(STAMP) wordnet
	$(VENV)/bin/decaf compare --wordnet-path "$(WORDNET)" --out-dir runs/demo --overwrite

# the op library's own demo: DLoRA's interference vs DeCAF's exact consensus on the benchmark cases (tables)
kernels-demo: $(STAMP)
	$(PY) -m bench.demo

bench: $(STAMP)
	$(PY) -m bench.compare --cases tiny,small

bench-pytest: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info decaf_kernels/*.so runs
