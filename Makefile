# modeldeploy: every set-up step lives here, so a fresh machine needs only `make run` or `make test`.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Debian packages the tests and benchmarks use (a real Prometheus server; wrk for REST load).
APT_PACKAGES := prometheus wrk libb64-0d

# Azure's Blob emulator (npm `azurite`, on Node 20) for the object-storage tests, under .tools/ (git-ignored).
AZURITE := .tools/azurite/node_modules/.bin/azurite-blob
AZURITE_VERSION := 3.37.0

.PHONY: setup system-deps test-tools run serve serve-s3 test e2e bench bench-rollouts bench-storage bench-workers lint docs crds chart image demo-models clean

setup: $(STAMP) system-deps $(AZURITE)

$(STAMP): pyproject.toml dev/pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[server,operator,dev]' -e ./dev
	touch $(STAMP)

# Installs the Debian packages above when they are missing (needs root or sudo). Fails when it cannot:
# the tests need a real Prometheus and fail without it.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; else echo "missing Debian packages:$$missing (run make system-deps as root)" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(AZURITE):
	@command -v npm >/dev/null || { echo "npm (Node 20) is needed to install azurite for the storage tests" >&2; exit 1; }
	mkdir -p .tools/azurite
	npm install --prefix .tools/azurite --save-exact --no-audit --no-fund --silent azurite@$(AZURITE_VERSION)

# The demo SavedModels (rebuilt when the builder changes), and warmup files for the two versions
# that the local cluster's example serves (its pods turn ready only after replaying them).
DEMO_CONFIG := demo_models/models.config
DEMO_WARMUP := $(foreach v,1 2,demo_models/two_versions/$(v)/assets.extra/tf_serving_warmup_requests)

$(DEMO_CONFIG): $(STAMP) dev/demomodels/__init__.py
	$(PY) -m demomodels --out demo_models

demo_models/two_versions/%/assets.extra/tf_serving_warmup_requests: $(DEMO_CONFIG)
	$(VENV)/bin/model-server-warmup demo_models/two_versions/$* --batch_sizes 1,2,4,8,16,32,64,128

demo-models: setup $(DEMO_CONFIG) $(DEMO_WARMUP)

# The whole system on this machine, in the foreground: a local Kubernetes API, the operator, a node
# agent running pods as model-server processes, Services on 127.0.0.1, Prometheus; then the canary
# example (examples/local-canary.yaml). Ctrl-C stops everything. See docs/local-cluster.md.
run: demo-models
	$(PY) -m localcluster --state-dir .localcluster --mount /models=$(CURDIR)/demo_models --example examples/local-canary.yaml

# The model server alone on the demo models (gRPC :8500, REST :8501).
serve: demo-models
	$(VENV)/bin/model-server --port=8500 --rest_api_port=8501 --model_config_file=demo_models/models.config

# The model server alone on the demo models read from a local S3-compatible server (moto on :9000),
# as from MinIO or S3: examples/serve-from-s3.sh (docs/model-server.md, Models from object storage).
serve-s3: demo-models
	bash examples/serve-from-s3.sh

# The load tool bench/test_bench.py drives: perf_analyzer from the tritonclient wheel and its
# libcudart, under bench/work/ (git-ignored; bench/setup.sh installs the rest for make bench).
test-tools: $(STAMP) system-deps $(AZURITE)
	bash bench/setup.sh --tools-only
	$(AZURITE) --version >/dev/null

test: setup test-tools
	$(PY) -m pytest -m "not e2e" -q

# The end-to-end scenarios (e2e/): on the local cluster, or on the cluster E2E_KUBECONFIG names.
e2e: setup
	$(PY) -m pytest -q e2e

bench: setup
	$(PY) bench/run.py
	$(PY) bench/workers.py
	$(PY) bench/operator_scale.py
	$(PY) bench/rollouts.py
	$(PY) bench/storage.py

# Rollout judgement alone: 20 healthy, 10 slow and 10 erroring rollouts on the local cluster (about 15 min).
bench-rollouts: setup
	$(PY) bench/rollouts.py

# Models from object storage: a new version's upload to AVAILABLE, and a 512 MB model's download against
# `aws s3 cp`, on a local moto S3 server (about 3 min; bench/RESULTS.md's object-storage section).
bench-storage: setup
	$(PY) bench/storage.py

# Front-end workers (--frontend_workers): one process against two workers beside PyTriton and the no-op
# server, with 1 and 4 load clients; CPU and memory per process; a projection to more cores (about 6 min;
# bench/RESULTS.md's front-end workers section).
bench-workers: setup
	$(PY) bench/workers.py

# Lint: the same verdict on every machine (the tools are pinned in pyproject.toml's dev extra).
lint: setup
	$(VENV)/bin/ruff check operator server_image dev tests bench e2e
	$(VENV)/bin/mypy operator/modeldeploy server_image/modelserver dev/localcluster dev/demomodels
	@# the layers and the arrows between them (.importlinter; docs/development.md explains them)
	$(VENV)/bin/lint-imports --no-cache
	@# dead code in the shipped packages (settings in pyproject.toml, [tool.vulture])
	$(VENV)/bin/vulture | { ! grep -E '^(operator|server_image)/'; }
	@# the docs site: strict, so a broken link or a page missing from the nav fails
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/docs

# The documentation site (mkdocs.yml, docs/) into build/docs/; strict: a broken link between pages fails.
docs: setup
	$(VENV)/bin/mkdocs build --strict --site-dir build/docs

# Generates crds/ from the pydantic models and copies them into the chart (tests check both copies).
crds: setup
	$(PY) -m modeldeploy.api.crdgen --out crds
	mkdir -p helm/modeldeploy/crds && cp crds/*.yaml helm/modeldeploy/crds/

chart: crds

image:
	docker build -t modeldeploy/model-server:latest -f server_image/Dockerfile .
	docker build -t modeldeploy/operator:latest -f operator/Dockerfile .

clean:
	rm -rf $(VENV) demo_models .pytest_cache .localcluster
