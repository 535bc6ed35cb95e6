# rerankd: two commands for a new user, `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
RERANKD := $(VENV)/bin/rerankd
STAMP := $(VENV)/.installed
TRITON_STAMP := .cache/triton/.installed
PROTO_STAMP := server/api/_gen/.generated

.PHONY: run test venv protos triton model data redis node-client perf k8s-check clean help

help:
	@echo "make run   - set everything up and serve (Triton + gateway) on embedded defaults"
	@echo "make test  - set up what the tests need and run them"
	@echo "make perf  - run the benchmark suite on a short budget"

$(STAMP): pyproject.toml
	@echo "==> creating virtual environment $(VENV) and installing packages (about a minute)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(PY) -m pip install --progress-bar on -e '.[export,engines,dev]' 2>&1 \
	  | grep --line-buffered -E '^(Collecting|Installing|Successfully|ERROR)|━' || true
	@$(PY) -c "import cli, server, contract, interactions, training, evaluation, export, grpc, tritonclient.grpc, onnxruntime, openvino, tokenizers, torch"
	@touch $@

venv: $(STAMP)

$(PROTO_STAMP): $(STAMP) protos/rerank/v1/reranker.proto
	@$(PY) -m server.api.pb --generate
	@touch $@

protos: $(PROTO_STAMP)

$(TRITON_STAMP): $(STAMP)
	@$(RERANKD) triton --install-only

triton: $(TRITON_STAMP)

# First run: fine-tune the reranker on MovieLens-100K within TRAIN_BUDGET_MIN minutes (training,
# validation and export included; progress shown), then reuse that trained version.
TRAIN_BUDGET_MIN ?= 4
model: $(STAMP)
	@$(RERANKD) train --if-missing --budget-min $(TRAIN_BUDGET_MIN)

data: $(STAMP)
	@$(RERANKD) data movielens --if-empty

run: venv protos triton model data
	@$(RERANKD) serve --with-triton

# The tests start their own redis-server on a free port; this only installs the binary.
redis:
	@command -v redis-server >/dev/null || { echo "==> installing redis-server (Debian package)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	  || echo "WARNING: could not install redis-server; Redis tests will be skipped"; }

# The Node gRPC client of the TLS test (tests/node: pinned in package-lock.json), installed into
# tests/node/node_modules; without node/npm that one test is skipped.
NODE_STAMP := tests/node/node_modules/.installed
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null && command -v node >/dev/null; then \
	  echo "==> installing the Node test client's packages (tests/node)"; \
	  npm ci --prefix tests/node --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "WARNING: node/npm not installed; the Node TLS client test will be skipped"; fi

node-client: $(NODE_STAMP)

test: venv protos triton redis node-client
	@$(PY) -m pytest -q -ra tests

# The suite exports its own model version into reports/perf/work (PERF_ARGS="--hf-dir DIR" or
# "--model-version N" to bench another one; "--budget full" for longer measurements).
perf: venv protos triton
	@$(PY) -c "import sentence_transformers, openvino, nncf" 2>/dev/null || \
	  $(PY) -m pip install --progress-bar on -q -e '.[export,engines,dev,perf]' 2>&1 | grep -v '^WARNING: Location'
	@$(PY) -m perf.run_all --budget short $(PERF_ARGS)

# Render the Kubernetes overlays (deploy/kubernetes) with the venv's pinned kubectl and check
# them offline against the Kubernetes schemas and the settings; nothing is applied to a cluster.
k8s-check: venv
	@$(PY) -m pytest -q tests/unit/deploy

clean:
	rm -rf $(VENV) .cache var server/api/_gen tests/node/node_modules
