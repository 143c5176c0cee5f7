# Set-up and the two main jobs. Everything lands in .venv at the repository root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RES := VistaFinetune/Resources
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint clean

$(STAMP): $(RES)/requirements-torch.txt $(RES)/requirements.txt $(RES)/requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(RES)/requirements-torch.txt
	$(PY) -m pip install --quiet -r $(RES)/requirements.txt -r $(RES)/requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vista-finetune demo

test: $(STAMP) lint
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)
