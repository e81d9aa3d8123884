# drkit: `make demo` shows it working, `make test` runs the tests, `make bench` compares
# with restic and borg. Each target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	./scripts/install-system-deps.sh

## Back up a sample data set into ./demo, restore it, check every byte; then a restore
## drill over throwaway sample sources (files, K3s SQLite under load, Git, etcd, volume image).
demo: $(STAMP)
	$(BIN)/drkit demo --dir demo
	$(BIN)/drkit drill --sandbox

## Install what the tests need (Debian packages + Python test extras) and run them.
test: system-deps $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Benchmarks against restic and borg (about 1 GiB of generated data; not part of the tests).
bench: system-deps $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo bench/out .pytest_cache
