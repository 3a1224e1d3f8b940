# make demo: set up and run the main job on the embedded demo cohort.
# make test: set up and run lint + the whole test suite: the quick tests, then the end-to-end ones marked slow.
# make docs: build the documentation site (docs/, mkdocs.yml) into site/ in strict mode.
# Both create their own virtual environment in .venv (override with VENV=...).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint format clean

$(STAMP): setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipeline.demo --out demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not slow" --durations=10
	$(PY) -m pytest -q -n 2 --dist worksteal -m slow --durations=10

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) demo runs site bundle/models/*.pt bundle/models/*.ts
