# Two entry points, each creating the virtual environment on first use:
#   make demo   run the whole pipeline on built-in synthetic data with local Ray; open
#               outputs/report/index.html (the log of everything Ray printed: outputs/logs/)
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "sas-ray needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

.PHONY: demo test lint bench
demo: $(VENV)/.installed
	$(VENV)/bin/sas-ray pipeline

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

bench: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.run --quick
