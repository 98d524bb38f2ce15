# Developer and CI entry points; .ci/run calls `make test` unchanged.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install system tools run test lint typecheck pytest unit integration e2e bench clean

# Debian packages the tests need, installed with apt when missing (as root, else with sudo):
# Java and Maven run the real Kafka broker, Chromium renders the dashboard in the browser
# test, docker-compose validates the compose file, faketime (libfaketime) sets one node's clock
# ahead in the chaos test, nginx checks the consistent-hash ring against the real one and,
# with its njs module (a file, not a command), balances users onto their partition's owners,
# gcc and Python's headers (python3-dev) compile Kafka's murmur2 (setup.py),
# python3-venv builds .venv. `make run`
# needs none of them (without Java it starts a standalone node and says why).
SYSTEM_PACKAGES := java:openjdk-17-jre-headless mvn:maven chromium:chromium curl:curl \
	docker-compose:docker-compose faketime:faketime nginx:nginx gcc:gcc \
	/usr/lib/nginx/modules/ngx_http_js_module.so:libnginx-mod-http-js
system:
	@missing=""; \
	for pair in $(SYSTEM_PACKAGES); do \
		need="$${pair%%:*}"; \
		case "$$need" in /*) test -e "$$need" ;; *) command -v "$$need" >/dev/null 2>&1 ;; esac \
			|| missing="$$missing $${pair#*:}"; \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_path("include") + "/Python.h")' \
		>/dev/null 2>&1 || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then sudo=""; \
		elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
		else echo "make: the tests need these Debian packages:$$missing (install them as root)" >&2; exit 1; fi; \
		echo "make: installing$$missing"; \
		log=$$(mktemp); \
		{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			$$sudo apt-get install -y -qq --no-install-recommends $$missing; } >"$$log" 2>&1 \
			|| { cat "$$log" >&2; rm -f "$$log"; exit 1; }; \
		rm -f "$$log"; \
	fi

$(BIN)/.installed: requirements.txt pyproject.toml setup.py service/replication/_murmur2.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --force-reinstall --no-deps $$(grep '^opentelemetry-proto==' requirements.txt)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

# grpcurl, a gRPC client nobody here wrote, calls ShouldRateLimit by server reflection in
# tests/e2e/test_grpcurl.py. Built once with `go install` (Go is on every CI machine) into
# .tools/ (ignored by git); a new version builds beside the old. When it cannot be built,
# `make pytest` and `make e2e` go on and that test fails saying why (see GRPCURL_LOG).
GRPCURL_VERSION := v1.9.4
GRPCURL := $(CURDIR)/.tools/grpcurl-$(GRPCURL_VERSION)/grpcurl
GRPCURL_LOG := $(CURDIR)/.tools/grpcurl-$(GRPCURL_VERSION).log
export GRPCURL GRPCURL_LOG

tools: $(GRPCURL)

$(GRPCURL):
	@mkdir -p $(@D)
	@command -v go >/dev/null 2>&1 || { \
		echo "make: Go is not installed: cannot build grpcurl $(GRPCURL_VERSION)" | tee $(GRPCURL_LOG) >&2; \
		exit 1; }
	@echo "make: building grpcurl $(GRPCURL_VERSION) with go install (once; log $(GRPCURL_LOG))"
	@GOBIN=$(@D) GOTOOLCHAIN=local go install \
		github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION) >$(GRPCURL_LOG) 2>&1 \
		|| { tail -n 20 $(GRPCURL_LOG) >&2; echo "make: grpcurl was not built" >&2; exit 1; }

## The main job: a local Kafka broker and a 3-node cluster (one standalone node without Java).
run: install
	$(BIN)/ratelimiter up

## Everything CI checks: system packages, lint, types, then unit, integration (real Kafka,
## started by the tests unless KAFKA_BOOTSTRAP_SERVERS names one) and e2e (processes).
test: system install lint typecheck pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

pytest: install
	@$(MAKE) --no-print-directory tools || echo "make: going on without grpcurl" >&2
	$(BIN)/pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: install
	@$(MAKE) --no-print-directory tools || echo "make: going on without grpcurl" >&2
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m stress_test.bench_core
	$(BIN)/python -m stress_test.bench_http

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .tools
