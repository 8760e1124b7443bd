# Two commands work on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rayleigh-installed
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)
export VLLM_TARGET_DEVICE := cpu

.PHONY: install lint format test unit demo crd docs sync bench clean

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
# pytest's exit code 5 ("no tests collected") is a failure, never a pass.
test: lint
	$(PY) -m pytest -p no:cacheprovider --timeout=900 --durations=15 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

unit: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider -m "not integration" tests

# Regenerate the checked-in CRD from the pydantic API model.
crd: $(STAMP)
	$(VENV)/bin/rayleigh crd > manifests/crds/serving.rayleigh.dev_modeldeployments.yaml
	cp manifests/crds/serving.rayleigh.dev_modeldeployments.yaml charts/rayleigh/crds/

# Regenerate dashboards JSON and copy generated files (CRD, dashboards, RBAC rules) into the chart.
sync: $(STAMP)
	$(PY) charts/sync.py

# Regenerate the API field reference (same text as `rayleigh explain` / `kubectl explain`).
docs: $(STAMP)
	$(PY) -c "from rayleigh_api.reference import markdown; print(markdown(), end='')" > docs/API.md
	$(PY) scripts/merge_docs.py

# Serve the tiny bundled model locally through the gateway (no cluster, no GPU).
demo: $(STAMP)
	$(VENV)/bin/rayleigh up -f manifests/examples/tiny.yaml

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
