# allen-sr: `make demo` and `make test` do all set-up on a fresh machine (README).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= out/demo
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each test file runs whole in one of them, the longest files first
# (tests/conftest.py, LONGEST_FIRST). 0 runs in this process.
TEST_WORKERS ?= 2

.PHONY: venv demo test test-fast bench pretrained clean help
.DEFAULT_GOAL := help

help:
	@echo "make demo   build .venv if needed, then run the whole pipeline on the sample images -> $(OUT)/"
	@echo "make test   build .venv if needed, then run the test suite"
	@echo "make pretrained  retrain, measure and document the shipped models (about two hours on 2 cores)"
	@echo "make bench  run every benchmarks/bench_*.py and write benchmarks/RESULTS.md"
	@echo "make venv   (re)build .venv from requirements/lock.txt"
	@echo "make clean  remove out/ and caches (keeps .venv)"

$(STAMP): requirements/lock.txt setup.py pyproject.toml scripts/make_venv.sh
	VENV=$(VENV) bash scripts/make_venv.sh

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/allen-sr demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

pretrained: $(STAMP)
	$(PY) scripts/make_pretrained.py

clean:
	rm -rf out .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
