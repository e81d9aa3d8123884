# drkit: `make demo` shows it working, `make test` runs the tests, `make bench` compares
# with restic and borg. Each target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-latest constraints bench venv system-deps clean

# Every install is held to constraints.txt (known-good versions of everything the tests, lint
# and bench use), so a new upstream release never turns CI red by surprise. `make test-latest`
# tries the newest releases in a separate venv; `make constraints` then records them on purpose.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	./scripts/install-system-deps.sh

## Back up a sample data set into ./demo, restore it, check every byte; then a restore
## drill over throwaway sample sources (files, K3s SQLite under load, Git, etcd, volume image).
demo: $(STAMP)
	$(BIN)/drkit demo --dir demo
	$(BIN)/drkit drill --sandbox

## Install what the tests need (Debian packages + Python test extras) and run them
## (two workers: the suite is bound by waiting on real servers as much as by CPU).
PYTEST_ARGS ?= -q
PYTEST_WORKERS ?= 2
test: system-deps $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

## The same tests against the newest release of every dependency (no constraints), in .venv-latest.
## Green? `make constraints` records those versions in constraints.txt: an upgrade is a commit.
LATEST := .venv-latest
test-latest: system-deps
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade -e '.[test]'
	$(LATEST)/bin/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

constraints:
	test -x $(LATEST)/bin/python || { echo "run 'make test-latest' first"; exit 2; }
	{ echo "# Known-good versions (make constraints, $$(date -u +%F)): see the Makefile."; \
	  $(LATEST)/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' | sort -f; } > constraints.txt

## Benchmarks against restic and borg (about 1 GiB of generated data; not part of the tests).
bench: system-deps $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LATEST) demo bench/out .pytest_cache
