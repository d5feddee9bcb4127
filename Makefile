# One command each: `make test` (set-up + default test suite + HTML report),
# `make compare` (set-up + PyTorch-vs-Jittor comparison report on the bundled data),
# `make mutants` (mutation testing of both ports against the parity suite, hours: see below).
# .venv/bin/ holds launchers onto the shared environment (scripts/setup.sh says why).
VENV = .venv
PYTEST = $(VENV)/bin/python -m pytest

.PHONY: setup test parity perf compare mutants gpu-image-check clean clean-env

setup:
	@bash scripts/setup.sh

# Under CI (CI set, as .ci/run does) the tests marked `ci` run too.
test: setup
	$(PYTEST) --benchmark-disable --html=reports/tests.html --self-contained-html \
		--durations=25 $(if $(CI),-m 'not slow')

parity: setup
	$(PYTEST) parity_tests

perf: setup
	$(PYTEST) perf_tests --benchmark-autosave

compare: setup
	$(VENV)/bin/gfocal compare --out-dir reports/comparison

# Mutation testing of the ports (judged by the parity suite alone), the converter and the
# shared code (judged by their unit tests); not part of `make test` (hours on 2 cores).
# Rewrites the committed report parity_tests/mutation/REPORT.md; work in reports/mutation/.
MUTANTS_ARGS ?= --sample torch=80,jittor=80,shared=170,converter=20 --seed 17 --parallel
mutants: setup
	bash scripts/mutants.sh $(MUTANTS_ARGS) --report parity_tests/mutation/REPORT.md

# The borrowed GPU machine's software (Python 3.12, torch 2.11.0, torchvision 0.26.0, numpy 2,
# no package index) on this CPU: `scripts/gpu.py check --dry-run --device cpu` with its wheel
# install, and the PyTorch side of parity_tests and perf_tests, in an environment of those
# versions kept in ~/.cache/gfocal-parity/ (its first build downloads ~3 GB from PyPI; then
# 6 to 8 minutes on 2 cores, not part of `make test`). Writes reports/gpu-image-check/<time>/.
GPU_IMAGE_ARGS ?=
gpu-image-check:
	python3 scripts/gpu.py image $(GPU_IMAGE_ARGS)

clean:
	rm -rf reports .pytest_cache .hypothesis

# Deletes the shared frameworks environment of this dependency set and this checkout's .venv/.
clean-env:
	@bash scripts/setup.sh --remove
