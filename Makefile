# Two commands for a fresh clone: `make run` (the app on the built-in demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: run test lint bench-graphs bench-cellvgae fidelity

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

PORT ?= 8501

# Opens on the Data page with the built-in demo dataset loaded (no download needed).
run: $(STAMP)
	$(VENV)/bin/streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench-graphs: $(STAMP)
	$(PY) benchmarks/bench_graphs.py

bench-cellvgae: $(STAMP)
	$(PY) benchmarks/bench_cellvgae.py

fidelity: $(STAMP)
	$(PY) benchmarks/fidelity_cellvgae.py
