# `make demo` and `make test` set everything up from scratch in .venv (torch, compressai, the C++ coder).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := datasets/samples/unsplash-jacob-aguilar-256.png

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py pyproject.toml $(wildcard cpp/*.cpp cpp/*.hpp)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py $(SAMPLE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python tools/bench_coder.py

clean:
	rm -rf build *.egg-info bitstream/*.so $(VENV)
