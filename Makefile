# One command each: `make test` (set-up + default test suite + HTML report),
# `make compare` (set-up + PyTorch-vs-Jittor comparison report on the bundled data),
# `make mutants` (mutation testing of both ports against the parity suite, hours: see below).
# .venv/bin/ holds launchers onto the shared environment (scripts/setup.sh says why).
VENV = .venv
PYTEST = $(VENV)/bin/python -m pytest

.PHONY: setup test parity perf compare mutants clean clean-env

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

# Mutation testing of both ports with the parity suite as the killing suite (not part of
# `make test`: about 80 minutes on 2 cores for the committed sample). Rewrites the committed
# report parity_tests/mutation/REPORT.md; work files go to reports/mutation/.
MUTANTS_ARGS ?= --sample 180 --seed 17 --parallel
mutants: setup
	bash scripts/mutants.sh $(MUTANTS_ARGS) --report parity_tests/mutation/REPORT.md

clean:
	rm -rf reports .pytest_cache .hypothesis

# Deletes the shared frameworks environment of this dependency set and this checkout's .venv/.
clean-env:
	@bash scripts/setup.sh --remove
