# Set-up and main commands. TORCH is pinned first so that no dependency pulls a multi-GB CUDA build;
# override it elsewhere, e.g. `make test TORCH=torch==2.5.1`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo test bench bench-train clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

env: $(VENV)/.installed

demo: env
	$(VENV)/bin/ddpm-hf train --output_dir outputs/demo

test: env
	$(PY) -m pytest -q tests

bench: env
	$(PY) benchmarks/bench_scheduler.py

bench-train: env
	$(PY) benchmarks/bench_train.py --rounds 5 --images 3072

clean:
	rm -rf $(VENV) outputs
