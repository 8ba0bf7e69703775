# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGELOOP := $(VENV)/bin/edgeloop
DEMO := demo-out

.PHONY: demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.stamp-demo: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[sklearn]'
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.stamp-demo

demo: $(VENV)/.stamp-demo
	$(PY) examples/train_digits.py $(DEMO)/digits.joblib
	$(EDGELOOP) profile $(DEMO)/digits.joblib --target nrf52840
	$(EDGELOOP) targets $(DEMO)/digits.joblib

test: $(VENV)/.stamp-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
