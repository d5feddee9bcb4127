# One command each: `make test` (set-up + default test suite + HTML report),
# `make compare` (set-up + PyTorch-vs-Jittor comparison report on the bundled data).
# .venv/bin/ holds launchers onto the shared environment (scripts/setup.sh says why).
VENV = .venv
PYTEST = $(VENV)/bin/python -m pytest

.PHONY: setup test parity perf compare clean clean-env

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

# Deletes the shared frameworks environment of this dependency set and this checkout's .venv/.
clean-env:
	@bash scripts/setup.sh --remove
