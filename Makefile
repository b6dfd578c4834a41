# fedintel: the two set-up commands are `make quickstart` and `make test`.
# Both create .venv if missing and install everything (idempotent; only package registries are used).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedintel-installed
export FLWR_TELEMETRY_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install quickstart test test-all lint bench paper paper-quick clean

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(VENV)/bin/fedintel run examples/quickstart.yaml

# Two workers: many tests wait on processes and sockets (Flower's polling, device workers), so the
# suite's wall time nearly halves on 2 cores. Each file stays on one worker (module fixtures are shared),
# in collection order: tests/conftest.py puts the longest modules first.
test: install
	$(VENV)/bin/python -m pytest -m "not slow" -n 2 --dist loadfile --no-loadscope-reorder

test-all: install
	$(VENV)/bin/python -m pytest

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(VENV)/bin/python benchmarks/client_throughput.py
	$(VENV)/bin/python benchmarks/memory.py

clean:
	rm -rf $(VENV) .pytest_cache runs

paper: install
	$(VENV)/bin/fedintel reproduce paper

paper-quick: install
	$(VENV)/bin/fedintel reproduce paper --quick
