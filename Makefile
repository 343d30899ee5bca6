# inferad: every target installs what it needs first and is quick the second time.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip --disable-pip-version-check --quiet

NPM_STAMP := contracts/node_modules/.installed

.PHONY: install system llama-invariant test demo bench reliability lint contracts clean

install: $(STAMP) $(NPM_STAMP) system

# System tools the NAT tests use (network namespaces, NAT): installed when missing and we are root.
system:
	@command -v ip >/dev/null && command -v iptables >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing iproute2 and iptables (NAT tests)"; \
	    apt-get install -y -q iproute2 iptables >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q iproute2 iptables >/dev/null; }; \
	  else echo "note: iproute2 and iptables are missing: the NAT tests will be skipped"; fi; }

# The pinned Solidity compiler (solc-js) and local chain (anvil), from the npm registry.
$(NPM_STAMP): contracts/package.json
	cd contracts && npm install --no-audit --no-fund --loglevel=error
	@touch $@

# Recompile the contracts into contracts/build/*.json (committed; a test checks they match).
contracts: $(NPM_STAMP)
	cd contracts && node compile.js

# llama-cpp-python builds from source the first time (~6 min on 2 cores); pip
# caches the wheel, so later installs take seconds.  For a CUDA build:
#   CMAKE_ARGS="-DGGML_CUDA=on" make install
# The CPU build targets AVX2 (GGML_NATIVE=OFF), not the exact CPU it is built on:
# -march=native turned on llama.cpp's AMX kernels on a Sapphire Rapids VM, where
# every llama_decode then crashed (SIGSEGV); and a cached wheel may meet another CPU.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing inferad and its dependencies into $(VENV) (first time: llama.cpp compiles, ~6 min)"
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install -e '.[dev]'
	$(PY) -c "from inferad.models import resolve; print('model ready:', resolve('gemma-3-270m').path)"
	@touch $@

# llama.cpp for batch-invariant engines (engine.batch_invariant, docs/verification.md): the same
# llama-cpp-python built without llamafile's sgemm, whose kernels change with a batch's rows.
# Built once into a wheel under ~/.cache/inferad (pip's own cache keys a wheel by its version,
# not by CMAKE_ARGS), installed into build/llama-invariant: run with PYTHONPATH=build/llama-invariant.
LLAMA_VERSION := $(shell sed -n 's/^ *llama-cpp-python==//p' setup.cfg)
INVARIANT_WHEELS := $(HOME)/.cache/inferad/wheels/llama-invariant-$(LLAMA_VERSION)
INVARIANT := build/llama-invariant
llama-invariant: $(INVARIANT)/.installed
$(INVARIANT)/.installed: $(STAMP)
	@ls $(INVARIANT_WHEELS)/*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_VERSION) without llamafile into $(INVARIANT_WHEELS) (~6 min)"; \
	  CMAKE_ARGS="$(CMAKE_ARGS) -DGGML_LLAMAFILE=OFF" $(PIP) wheel --no-cache-dir --no-deps \
	    -w $(INVARIANT_WHEELS).tmp llama-cpp-python==$(LLAMA_VERSION) && mv $(INVARIANT_WHEELS).tmp $(INVARIANT_WHEELS); }
	$(PIP) install --no-deps --upgrade --target $(INVARIANT) $(INVARIANT_WHEELS)/*.whl
	@touch $@

test: install llama-invariant
	$(PY) -m pytest -q -m "not long"

demo: install
	bash scripts/demo.sh

bench: install
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/api_overhead.py
	$(PY) benchmarks/verify_cost.py
	$(PY) benchmarks/verify_calibration.py
	$(PY) benchmarks/swarm.py
	$(PY) benchmarks/settlement_gas.py
	$(PY) benchmarks/model_transfer.py
	$(PY) benchmarks/nat_reach.py

# The long form of the reliability suite (CI runs a short one inside `make test`):
# 200 jobs under SIGKILLs of a worker, a gateway and the oracle; 40 fuzz cases per target;
# and the tests marked long (the oracle killed on either side of sending a settlement).
reliability: install
	INFERAD_RELIABILITY_JOBS=200 INFERAD_FUZZ_EXAMPLES=40 timeout 600 \
		$(PY) -m pytest -q tests/test_reliability.py tests/test_fuzz.py
	timeout 900 $(PY) -m pytest -q -m long

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo-home demo-devnet contracts/node_modules
