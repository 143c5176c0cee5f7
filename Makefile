# Set-up and the two main jobs. Everything lands in .venv at the repository root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RES := VistaFinetune/Resources
STAMP := $(VENV)/.installed
# A second job environment with the newest MONAI (>= 1.5) and numpy 2, for the compatibility-override test.
NEWEST := .venv-newest-monai
NEWEST_PY := $(NEWEST)/bin/python
NEWEST_STAMP := $(NEWEST)/.installed
# The Slicer-Python test environment: only what a stock 3D Slicer ships (numpy 2, scipy, SimpleITK, ...) plus
# slicer-core and PySide6 as the named stand-ins for its MRML and Qt. The tests of what runs in Slicer's process
# (Testing/conftest.py: SLICER_PROCESS_TESTS) run there, with .venv as their job environment.
SLICER_ENV := .venv-slicer
SLICER_PY := $(SLICER_ENV)/bin/python
SLICER_STAMP := $(SLICER_ENV)/.installed

.PHONY: demo test test-fast test-slicer test-newest-monai tiny-weights lint clean

$(STAMP): $(RES)/requirements-torch.txt $(RES)/requirements.txt $(RES)/requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(RES)/requirements-torch.txt
	$(PY) -m pip install --quiet -r $(RES)/requirements.txt -r $(RES)/requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vista-finetune demo

test: $(STAMP) $(SLICER_STAMP) lint
	$(PY) -m pytest
	$(SLICER_PY) -m pytest

test-fast: $(STAMP) $(SLICER_STAMP)
	$(PY) -m pytest -m unit
	$(SLICER_PY) -m pytest -m unit

$(SLICER_STAMP): $(RES)/requirements-slicer-test.txt
	test -x $(SLICER_PY) || $(PYTHON) -m venv $(SLICER_ENV)
	$(SLICER_PY) -m pip install --quiet --upgrade pip
	$(SLICER_PY) -m pip install --quiet -r $(RES)/requirements-slicer-test.txt
	touch $(SLICER_STAMP)

test-slicer: $(STAMP) $(SLICER_STAMP)
	$(SLICER_PY) -m pytest

$(NEWEST_STAMP): pyproject.toml Makefile
	test -x $(NEWEST_PY) || $(PYTHON) -m venv $(NEWEST)
	$(NEWEST_PY) -m pip install --quiet --upgrade pip
	$(NEWEST_PY) -m pip install --quiet torch==2.13.0
	$(NEWEST_PY) -m pip install --quiet "monai>=1.5" "numpy>=2" nibabel scipy pytorch-ignite einops fire PyYAML jsonschema matplotlib pytest
	$(NEWEST_PY) -m pip install --quiet --no-deps -e .
	touch $(NEWEST_STAMP)

test-newest-monai: $(STAMP) $(NEWEST_STAMP)
	$(NEWEST_PY) -m pytest -m newest_monai Testing/test_newest_monai.py

# Pretrain the tiny bundle's weights again (about 5 CPU minutes) and ship them with their record.
tiny-weights: $(STAMP)
	rm -rf build/tiny-bundle
	$(VENV)/bin/vista-finetune tiny-bundle --rebuild build/tiny-bundle
	mkdir -p $(RES)/TinyBundle/models $(RES)/TinyBundle/docs
	cp build/tiny-bundle/models/model.pt $(RES)/TinyBundle/models/model.pt
	cp build/tiny-bundle/docs/pretraining.json $(RES)/TinyBundle/docs/pretraining.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(NEWEST) $(SLICER_ENV)
