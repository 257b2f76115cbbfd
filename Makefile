# raytrain: `make demo` runs the main job on an embedded local Ray, `make test` runs the tests.
# Both build the virtual environment first if it is missing. VARIANT=cuda for GPU machines.
VARIANT ?= cpu
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(VARIANT)
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint typecheck check-install bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh requirements/$(VARIANT).txt
	bash scripts/install.sh $(VARIANT) $(VENV)
	touch $@

demo: $(STAMP)
	$(VENV)/bin/raytrain run jobs/train_ml100k.yaml

test: $(STAMP) check-install lint typecheck
	$(PY) -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

check-install: $(STAMP)
	$(PY) scripts/check_install.py $(VARIANT)

lint: $(STAMP)
	$(VENV)/bin/ruff check raytrain kernels tests benchmarks scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy raytrain kernels

clean:
	rm -rf runs .pytest_cache
