# `make demo` and `make test` create .venv when it is missing, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On machines without a GPU, pin the CPU wheel of torch (an unpinned torch pulls CUDA wheels).
CONSTRAINTS ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "-c constraints-cpu.txt")
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slow bench install clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel -q
	$(PY) -m pip install $(CONSTRAINTS) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/mel demo

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow tests

bench: $(VENV)/.installed
	for b in zemel_latency scale pfmel_throughput features index_build link_path serve; do $(PY) benchmarks/$$b.py --quick || exit 1; done
	$(PY) benchmarks/plot.py

clean:
	rm -rf $(VENV) build *.egg-info
