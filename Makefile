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
	$(PY) -m pip install -q -e '.[sklearn,data,shrink]'
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.stamp-demo

TARGET := nrf52840

# The whole loop on scikit-learn's digits: import the data, train the smallest
# model that reaches 95%, shrink it for a Cortex-M4F board, export C, run it on
# an emulated Cortex-M4 (when arm-none-eabi-gcc and qemu-system-arm are there).
demo: $(VENV)/.stamp-demo
	rm -rf $(DEMO)
	$(EDGELOOP) data import sklearn:digits -o $(DEMO)/data
	$(EDGELOOP) train $(DEMO)/data --target $(TARGET) --min-score 0.95 -o $(DEMO)/digits.onnx
	$(EDGELOOP) profile $(DEMO)/digits.onnx --target $(TARGET)
	$(EDGELOOP) shrink $(DEMO)/digits.onnx --data $(DEMO)/data --target $(TARGET) --max-drop 0.02 -o $(DEMO)/shrink
	$(EDGELOOP) export $(DEMO)/shrink/model.onnx --target $(TARGET) -o $(DEMO)/c --verify
	$(PY) examples/demo_summary.py $(DEMO) $(TARGET)

test: $(VENV)/.stamp-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
