# Quick start (README): `make demo` runs the main job, `make test` runs the tests.
# Each target first sets up .venv (Python packages + the compiled extension) when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml requirements-dev.txt

# The second environment: the oldest supported torch (requirements-oldest.txt), where `make test` also runs the op
# library's tests. It gets a non-editable install built from a copy of the sources, so it neither reads nor
# overwrites the decaf_kernels/_C*.so that .venv's editable install keeps in the source tree.
OLDEST ?= .venv-oldest
OLDEST_PY := $(OLDEST)/bin/python
OLDEST_DEPS := $(OLDEST)/.deps-installed
OLDEST_STAMP := $(OLDEST)/.installed
# (decaf_lora is installed there too but never imported, so its edits do not trigger a rebuild)
OLDEST_SOURCES := $(shell find csrc -type f) $(shell find decaf_kernels -name '*.py') setup.py pyproject.toml
# decaf_lora's tests need the training stack (transformers, peft, ...), which only .venv has; the packaging tests
# (setup.py's choices, the sdist/wheel round trip with `build`) do not depend on torch's version and run in .venv
OLDEST_TESTS := --ignore-glob='tests/test_lora_*' --ignore=tests/test_packaging.py tests

# $(call pip_quiet,<pip command>,<log file>): pip's whole output goes to the log; the console gets the Downloading
# lines (with sizes: progress in CI logs), retries and the summary, and on a failure the end of the log.
# pipefail (bash): pip's exit status, not the filter's, decides.
pip_quiet = set -o pipefail; $(1) --progress-bar off 2>&1 | tee $(2) \
	| sed -u -n -E '/^ *Downloading|^(Successfully installed|WARNING: Retrying)/p' \
	|| { echo "error: pip failed; the end of $(2):" >&2; tail -n 30 $(2) >&2; exit 1; }
SHELL := /bin/bash

WORDNET ?= /usr/share/wordnet/data.noun

.PHONY: demo test test-oldest bench bench-pytest kernels-demo install install-oldest wordnet clean

$(STAMP): $(SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "== $(VENV): requirements-dev.txt"
	@$(call pip_quiet,$(PY) -m pip install --upgrade pip,$(VENV)/pip.log)
	@$(call pip_quiet,$(PY) -m pip install -r requirements-dev.txt,$(VENV)/pip.log)
	@echo "== $(VENV): building decaf-kernels (editable install)"
	$(PY) -m pip install -q --no-build-isolation -e .
	@$(PY) -c "import decaf_kernels, json; print(json.dumps(decaf_kernels.backend_info()['extension']))"
	@touch $(STAMP)

install: $(STAMP)

# torch's CUDA build from PyPI (download.pytorch.org's CPU wheels may be unreachable): ~2.5 GB of downloads,
# 4.3 GB installed, ~7 GB at the peak; not cached (--no-cache-dir). Any failure stops `make test`.
$(OLDEST_DEPS): requirements-oldest.txt
	@torch=$$(sed -n 's/^torch==//p' requirements-oldest.txt); \
	echo "== $(OLDEST): torch $$torch, the oldest supported, with its CUDA libraries from PyPI (~2.5 GB to download)"
	@rm -rf $(OLDEST)
	@$(PYTHON) -m venv $(OLDEST)
	@echo '*' > $(OLDEST)/.gitignore
	@$(call pip_quiet,$(OLDEST_PY) -m pip install --upgrade pip,$(OLDEST)/pip.log)
	@free_kb=$$(df -Pk $(OLDEST) | awk 'NR == 2 {print $$4}'); if [ "$$free_kb" -lt 7500000 ]; then \
		echo "error: $(OLDEST) needs ~7 GB free while installing (downloads + 4.3 GB installed); $$((free_kb / 1048576)) GB free" >&2; \
		exit 1; fi
	@SECONDS=0; $(call pip_quiet,$(OLDEST_PY) -m pip install --no-deps --no-cache-dir -r requirements-oldest.txt,$(OLDEST)/pip.log); \
	echo "== $(OLDEST): installed in $${SECONDS}s, $$(du -sh $(OLDEST) | cut -f1)"
	@touch $@

install-oldest: $(OLDEST_STAMP)

# The CUDA module is not built here: it does not depend on torch, .venv builds it, and no CUDA device runs it.
$(OLDEST_STAMP): $(OLDEST_DEPS) $(OLDEST_SOURCES)
	@echo "== $(OLDEST): building decaf-kernels from a copy of the sources"
	@rm -rf $(OLDEST)/src && mkdir -p $(OLDEST)/src
	@tar -cf - --exclude='*.so' --exclude=__pycache__ setup.py pyproject.toml README.md csrc decaf_kernels python_api \
		| tar -xf - -C $(OLDEST)/src
	@cd $(OLDEST)/src && DECAF_SKIP_CUDA_BUILD=1 ../bin/python -m pip install -q --no-build-isolation --no-deps .
	@$(OLDEST_PY) -I -c "$$OLDEST_CHECK" "$$(sed -n 's/^torch==//p' requirements-oldest.txt)"
	@touch $@

# Fails unless .venv-oldest runs the pinned torch with its own build of the compiled extension (-I: the source tree
# is not on sys.path, so the installed copy is what gets checked).
define OLDEST_CHECK
import os, sys, torch, decaf_kernels, decaf_kernels._triton  # every subpackage installed (Triton itself may be absent)
info = decaf_kernels.backend_info()
print(f"{sys.prefix}: torch {torch.__version__}, decaf_kernels._C {info['extension']['_C']}, triton {info['triton']}")
assert torch.__version__.split("+")[0] == sys.argv[1], f"torch {torch.__version__} is not the pinned {sys.argv[1]}"
assert decaf_kernels.__file__.startswith(sys.prefix), f"decaf_kernels imported from {decaf_kernels.__file__}"
assert info["extension"]["_C"] == "loaded", "the compiled extension did not load"
endef
export OLDEST_CHECK

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
	@$(MAKE) --no-print-directory test-oldest

# The op library's tests against the oldest supported torch. The pytest script, unlike `python -m pytest`, does not
# put the source tree on sys.path, so they import the copy installed in $(OLDEST); no cache, to leave .venv's alone.
test-oldest: $(OLDEST_STAMP)
	@echo "== $(OLDEST): the op tests (the Triton ones skip: torch's pinned Triton is too old, see requirements-oldest.txt)"
	$(OLDEST)/bin/pytest -q -p no:cacheprovider $(OLDEST_TESTS)

# The main job: DeCAF vs DLoRA on the built-in task (8 agents, ring), three seeds, in the regime where the regime
# study (bench/regimes.py, README) measured their clearest difference: strong label skew, Dirichlet(0.1) (stated
# here; user data is split IID unless asked). Evaluated at rounds 10 and 20.
demo: $(STAMP) wordnet
	$(VENV)/bin/decaf compare --wordnet-path "$(WORDNET)" --algorithms decaf,dlora --seeds 0,1,2 \
		--partition dirichlet --dirichlet-alpha 0.1 --eval-every 10 --out-dir runs/demo --overwrite

# the op library's own demo: DLoRA's interference vs DeCAF's exact consensus on the benchmark cases (tables)
kernels-demo: $(STAMP)
	$(PY) -m bench.demo

bench: $(STAMP)
	$(PY) -m bench.compare --cases tiny,small

bench-pytest: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-only

clean:
	rm -rf $(VENV) $(OLDEST) build *.egg-info decaf_kernels/*.so runs
