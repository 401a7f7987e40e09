# The two set-up commands in the README: `make run` and `make test`.
# Both create .venv on first use with the CPU build of torch 2.13.0 (never a CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev]'
	touch $(STAMP)

# The embedded service (gateway, encoder worker, index in one process; no Redis, no GPU) on
# http://127.0.0.1:8000 with the shipped checkpoint, storing into ./data.
run: $(STAMP)
	$(VENV)/bin/drca serve

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
