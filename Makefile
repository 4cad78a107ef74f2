# The README's two commands: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# The TensorRT Python bindings, 10.x and 11.x, for the API conformance test (tests/engines/trt_surface.py):
# downloaded, never installed (both install the same `tensorrt_bindings` folder).
TRT_BINDINGS := tensorrt-cu12-bindings==10.13.3.9 tensorrt-cu13-bindings==11.4.0.106

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip download -q --no-deps -d $(VENV)/trt-wheels $(TRT_BINDINGS)
	touch $@

demo: setup
	$(VENV)/bin/hw2rt demo

# One pytest worker per core (pytest-xdist), a test file per worker so module fixtures are made once;
# tests/conftest.py pins each worker to one torch thread and its own export cache.
test: setup
	$(PY) -m pytest -q -n auto --dist loadfile --durations=15

bench: setup
	$(VENV)/bin/hw2rt bench --suite cpu --json benchmarks/bench.json --md benchmarks/RESULTS.md \
		--plot benchmarks/bench_latency.png

clean:
	rm -rf $(VENV) outputs .pytest_cache
