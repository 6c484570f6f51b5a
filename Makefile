# Set-up and main commands. TORCH is pinned first so that no dependency pulls a multi-GB CUDA build;
# override it elsewhere, e.g. `make test TORCH=torch==2.5.1`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo demo-mnist model-card test test-fast test-compile bench bench-train docs clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

env: $(VENV)/.installed

demo: env
	$(VENV)/bin/ddpm-hf train --output_dir outputs/demo --overwrite_output_dir

# the mnist recipe on the embedded 5,000 MNIST digits (28x28): about 25 minutes of training on 2 idle cores, then
# the held-out bound and a sample grid
demo-mnist: env
	$(VENV)/bin/ddpm-hf train --dataset_name mnist --output_dir outputs/mnist --overwrite_output_dir

# after `make demo`: its model card, pictures and records (no weights) into model_cards/, the example card;
# after `make demo-mnist`: make model-card RUN=outputs/mnist CARD=ddpm-mnist-28
RUN ?= outputs/demo
CARD ?= ddpm-digits-8
model-card: env
	$(VENV)/bin/ddpm-hf card $(RUN)
	rm -rf model_cards/$(CARD)
	mkdir -p model_cards/$(CARD)/unet model_cards/$(CARD)/scheduler
	cp $(RUN)/training_args.json $(RUN)/metrics.json $(RUN)/model_index.json model_cards/$(CARD)/
	cp -r $(RUN)/README.md $(RUN)/images model_cards/$(CARD)/
	cp $(RUN)/unet/config.json model_cards/$(CARD)/unet/
	cp $(RUN)/scheduler/scheduler_config.json model_cards/$(CARD)/scheduler/

# TEST_WORKERS pytest-xdist processes (one per core of CI's two), an idle one taking tests queued for the other
# (worksteal: test times range from 0.01 s to minutes); tests that share a folder make it once between them
# (tests/helpers.made_once). TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2

# leaves out the tests marked compile (TorchInductor's cold C++ compile, minutes): `make test-compile` runs them.
# --durations lists the slowest tests at the end.
test: env
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not compile" --durations=15 tests

test-compile: env
	$(PY) -m pytest -q -m compile tests

# the in-process unit tier: equations, scheduler vs diffusers, likelihood, losses, small pipelines, CLI parsing;
# leaves out the tests marked slow (training runs, CLI processes, multi-process launches, Hub round trips, the
# full 1000-term bound, the paper-size networks)
test-fast: env
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow and not compile" tests

bench: env
	$(PY) benchmarks/bench_scheduler.py

bench-train: env
	$(PY) benchmarks/bench_train.py --rounds 5 --images 3072

# the documentation site (mkdocs.yml: docs/ and the API reference from the docstrings) into site/; --strict fails on a
# broken link or anchor, a nav entry without its page or a module the API reference cannot find
docs: env
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) outputs site
