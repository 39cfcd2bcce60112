# Two entry points: `make demo` runs the default experiment, `make test` runs the whole suite.
# torch is installed first, pinned, so pip takes the local CPU wheel instead of pulling CUDA packages.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEVCHAIN := devchain/node_modules/.package-lock.json

.PHONY: demo test lint bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# the local Ethereum dev node (hardhat, from the npm registry) for the JSON-RPC ledger test
$(DEVCHAIN): devchain/package.json devchain/package-lock.json
	npm ci --prefix devchain --no-audit --no-fund --loglevel=error

demo: $(STAMP)
	$(VENV)/bin/ppaia run

test: $(STAMP) $(DEVCHAIN)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

bench: $(STAMP) $(DEVCHAIN)
	$(PY) benchmarks/sim_speed.py
	$(PY) benchmarks/eval_scale.py
	$(PY) benchmarks/ledger_throughput.py
	$(PY) benchmarks/net_transfer.py
	$(PY) benchmarks/dht_lookup.py
	$(PY) benchmarks/dht_hostile.py
	$(PY) benchmarks/fuzz_long.py --cases 100000
	$(PY) benchmarks/swarm_round.py
	$(PY) benchmarks/peer_setup.py

clean:
	rm -rf $(VENV) runs .pytest_cache devchain/node_modules
