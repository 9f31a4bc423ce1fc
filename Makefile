# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine:
# they create .venv, install torch (CPU build) first, then the project with a
# constraints file so no later step can swap torch for a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-floor lint install proto bench bench-shapiq docs clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	echo "$(TORCH_SPEC)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[test,quantization,llamacpp]"
	touch $(STAMP)

install: $(STAMP)

# Regenerate the committed gRPC modules after editing proto/longshap/v1/*.proto.
proto: $(STAMP)
	$(BIN)/python proto/build.py

demo: install
	$(BIN)/python -m longshap.client.demo

test: install lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install lint
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff, then mypy on the installed namespace: mypy cannot follow setuptools' package-dir
# mapping, so it reads the folders through a longshap/ directory of links.
TYPECHECK := build/typecheck
lint: install
	$(BIN)/ruff check hierarchy server client proto bench tests
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/longshap
	for package in hierarchy server client proto; do ln -s ../../../$$package $(TYPECHECK)/longshap/$$package; done
	cd $(TYPECHECK) && MYPYPATH=. ../../$(BIN)/mypy -p longshap.hierarchy -p longshap.server -p longshap.client -p longshap.proto

# The engine's tests on the oldest transformers that pyproject accepts, so that floor stays true
# (Gemma 3 once failed everywhere on it while the suite passed on the newest release).
FLOOR_VENV ?= .venv-floor
TRANSFORMERS_FLOOR ?= transformers==4.56.2
test-floor:
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	echo "$(TORCH_SPEC)" > $(FLOOR_VENV)/constraints.txt
	$(FLOOR_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(FLOOR_VENV)/bin/python -m pip install -q -c $(FLOOR_VENV)/constraints.txt "$(TRANSFORMERS_FLOOR)" ".[test]"
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow" tests/hierarchy

# The documentation site into build/site, warnings as errors (mkdocs.yml; the hook in docs/_hooks
# generates the options table and links the sources for mkdocstrings).
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --config-file mkdocs.yml --site-dir build/site

bench: install
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[bench]"
	$(BIN)/python -m bench.estimators_vs_shapiq --quick

# LongSHAP's estimators against every Shapley approximator of shapiq >= 1.8, which needs Python >= 3.12:
# a venv of its own, without torch (the estimators and this benchmark need only NumPy). xgboost and
# LightGBM are the proxies of shapiq's ProxySHAP, RegressionMSR and ProxySPEX.
SHAPIQ_VENV ?= .venv-shapiq
SHAPIQ_PYTHON ?= python3.12
BENCH_ARGS ?=
bench-shapiq:
	test -x $(SHAPIQ_VENV)/bin/python || $(SHAPIQ_PYTHON) -m venv $(SHAPIQ_VENV)
	$(SHAPIQ_VENV)/bin/python -m pip install -q "shapiq>=1.8" xgboost-cpu lightgbm
	$(SHAPIQ_VENV)/bin/python -m pip install -q --no-deps -e .
	OMP_NUM_THREADS=1 $(SHAPIQ_VENV)/bin/python -m bench.estimators_vs_shapiq $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(SHAPIQ_VENV) build *.egg-info
