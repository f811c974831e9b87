# Every target that runs code installs first when needed, so `make demo` and
# `make test` work as the first command on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo lint bench clean

install: $(STAMP)

# torch is pinned so pip takes the local CPU build instead of a multi-GB CUDA one.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,wandb,tensorboard]'
	touch $(STAMP)

# Two pytest workers on two cores, one math thread each: oversubscribed
# OpenMP threads spin and make the suite several times slower.
test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q tests

demo: $(STAMP)
	$(BIN)/gpt2 demo --out demo-run

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-run .pytest_cache
