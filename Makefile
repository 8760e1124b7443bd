# Two commands work on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rayleigh-installed
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)
export VLLM_TARGET_DEVICE := cpu

.PHONY: install lint format test unit demo crd docs bench clean

$(STAMP): pyproject.toml scripts/install-python.sh
	scripts/install-system.sh
	scripts/install-tools.sh
	scripts/install-python.sh
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The whole suite: lint, unit, and integration tests against real Redis, Ray, vLLM and Prometheus.
test: lint
	$(PY) -m pytest -p no:cacheprovider --timeout=900 tests

unit: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider -m "not integration" tests

# Regenerate the checked-in CRD from the pydantic API model.
crd: $(STAMP)
	$(VENV)/bin/rayleigh crd > manifests/crds/serving.rayleigh.dev_modeldeployments.yaml
	cp manifests/crds/serving.rayleigh.dev_modeldeployments.yaml charts/rayleigh/crds/

# Regenerate the API field reference (same text as `rayleigh explain` / `kubectl explain`).
docs: $(STAMP)
	$(PY) -c "from rayleigh_operator.reference import markdown; print(markdown(), end='')" > docs/API.md

# Serve the tiny bundled model locally through the gateway (no cluster, no GPU).
demo: $(STAMP)
	$(VENV)/bin/rayleigh up -f manifests/examples/tiny.yaml

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
