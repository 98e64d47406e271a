# One virtual environment in .venv; torch is installed first with the CPU-wheel pin
# (an unpinned torch pulls several GB of CUDA packages).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PRESET ?= tiny
# Two pytest-xdist workers: the tiny models' training runs beside the rest of the suite
# (tests/conftest.py keeps modules that share a trained model on one worker).
PYTEST_ARGS ?= --numprocesses=2 --dist=loadgroup

.PHONY: setup run test clean

# pip byte-compiles on one core; compileall does the same on every core. Like pip, it
# leaves a file that does not compile on this Python (torch ships a 3.12-only test file).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile $(TORCH)
	$(BIN)/pip install --quiet --no-compile -e ".[dev]"
	$(BIN)/python -c "import compileall, sys; compileall.compile_dir(sys.argv[1], quiet=2, workers=0)" $(VENV)/lib
	touch $@

setup: $(BIN)/.installed

run: $(BIN)/.installed  ## the main job: a synthetic plate, models trained on its controls, a local Dask cluster
	$(BIN)/screenxai run -o runs/demo --preset $(PRESET) --resume

test: $(BIN)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
