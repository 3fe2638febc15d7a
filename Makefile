# Xiaohe Identity — developer entry points. `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
PROTO_OUT := clients/python
NODE_DIR := clients/node
# The Go stubs build in GOPATH mode against Debian's Go packages (no module proxy needed).
# Go's build cache: the user's (shared by every clone), or one in the clone without a HOME.
GOCACHE ?= $(if $(HOME),$(HOME)/.cache/go-build,$(CURDIR)/.go-cache)
GO_ENV := GO111MODULE=off GOFLAGS= GOPATH=$(CURDIR)/clients/go:/usr/share/gocode GOCACHE=$(GOCACHE)
# The API is checked for breaking changes against this commit (the one before, by default).
PROTO_BASE ?= HEAD~1

.PHONY: serve test lint types unit contract integration e2e protos protos-check buf-lint node-deps go-toolchain go-vet bench scaling profile-codes clean security-map security-map-check loadtest

# `make loadtest`: Locust against a running deployment (docs/operator-guide.md, "Load tests").
# On loopback it defaults to `make serve`'s bootstrap client and dev outbox; elsewhere pass
# CLIENT_FILE= (or set XIAOHE_LOADTEST_CLIENT_ID/_SECRET) and OUTBOX= if its codes are readable.
TARGET ?= 127.0.0.1:50051
USERS ?= 20
DURATION ?= 60s
PROCESSES ?= 1
SCENARIOS ?=
LOCAL_TARGET = $(filter 127.0.0.1:% localhost:%,$(TARGET))
CLIENT_FILE ?= $(if $(LOCAL_TARGET),$(wildcard var/bootstrap-client.json))
OUTBOX ?= $(if $(LOCAL_TARGET),var/outbox/sms.jsonl)
LOADTEST_ARGS ?=

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.installed: $(BIN)/uv requirements.lock pyproject.toml
	$(BIN)/uv pip install --quiet --python $(BIN)/python --require-hashes -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

serve: $(VENV)/.installed
	$(BIN)/xiaohe-identity serve

# Test files are spread over PYTEST_WORKERS processes (pytest-xdist; 1 runs them in this one).
PYTEST_WORKERS ?= 2

test: $(VENV)/.installed lint types protos-check go-vet security-map-check
	$(BIN)/pytest -q $(if $(filter-out 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) tests

lint: $(VENV)/.installed
	$(BIN)/ruff check server clients tests scripts benchmarks
	$(BIN)/ruff format --check server clients tests scripts benchmarks
	$(BIN)/buf lint protos
	$(BIN)/lint-imports
	@if git rev-parse -q --verify "$(PROTO_BASE)^{commit}" >/dev/null; then \
	  $(BIN)/buf breaking protos --against '.git#ref=$(PROTO_BASE),subdir=protos'; fi

types: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest -q tests/unit

# Python, Node (clients/node/src/gen) and Go (clients/go/src) from protos/ (buf.gen.yaml).
protos: $(VENV)/.installed node-deps go-toolchain
	$(BIN)/python scripts/gen_protos.py

protos-check: $(VENV)/.installed node-deps go-toolchain
	$(BIN)/python scripts/gen_protos.py --check

# ts-proto, TypeScript and @grpc/grpc-js as pinned by clients/node/package-lock.json.
node-deps: $(NODE_DIR)/node_modules/.installed

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-fund --no-audit
	touch $@

# Go, protoc-gen-go(-grpc) and the Go protobuf/gRPC libraries from Debian (root or sudo).
go-toolchain:
	sh scripts/install_go_toolchain.sh

# The generated stubs and the example (clients/go/src/xiaohe/identity/example) compile and vet.
go-vet: go-toolchain
	$(GO_ENV) go vet xiaohe/identity/...
	@test -z "$$(gofmt -l clients/go/src/xiaohe/identity/example)" || \
	  { gofmt -l clients/go/src/xiaohe/identity/example; echo "run gofmt -w on these" >&2; exit 1; }

security-map: $(VENV)/.installed
	$(BIN)/python scripts/security_map.py

security-map-check: $(VENV)/.installed
	$(BIN)/python scripts/security_map.py --check

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks --report docs/performance.md

# Login and ValidateToken throughput at 1, 2, 4 workers and on 1 vs 2 hosts (root for the hosts).
scaling: $(VENV)/.installed
	$(BIN)/python -m benchmarks.scaling --report docs/performance.md

loadtest: $(VENV)/.installed
	$(BIN)/python -m clients.loadtest --target "$(TARGET)" --users "$(USERS)" \
	  --duration "$(DURATION)" --processes "$(PROCESSES)" --scenarios "$(SCENARIOS)" \
	  $(if $(CLIENT_FILE),--client-file "$(CLIENT_FILE)") $(if $(OUTBOX),--outbox "$(OUTBOX)") \
	  $(LOADTEST_ARGS)

# PROFILE_ARGS="--tree" for the pyinstrument call tree instead of the ablations.
PROFILE_ARGS ?=
profile-codes: $(VENV)/.installed
	$(BIN)/python -m benchmarks.profile_codes $(PROFILE_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
