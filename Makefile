# One command each: `make test` (set-up + default test suite + HTML report),
# `make compare` (set-up + PyTorch-vs-Jittor comparison report on the bundled data).
VENV ?= .venv
PYTEST = $(VENV)/bin/python -m pytest

.PHONY: setup test parity perf compare clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PYTEST) --benchmark-disable --html=reports/tests.html --self-contained-html

parity: setup
	$(PYTEST) parity_tests

perf: setup
	$(PYTEST) perf_tests --benchmark-autosave

compare: setup
	$(VENV)/bin/gfocal compare --out-dir reports/comparison

clean:
	rm -rf reports .pytest_cache .hypothesis
