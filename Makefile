# Quick start: `make run` (a sweep on this machine) and `make test`.
# Both create the virtual environment .venv on first use; pins live in constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-gpu clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) tune.py

test: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 WANDB_MODE=offline $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The GPU check (about 8 minutes on one GPU; says so and exits 0 without CUDA): bench/gpu.py.
bench-gpu: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(PY) bench/gpu.py

clean-venv:
	rm -rf $(VENV)
