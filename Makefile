# Two commands for a fresh clone: `make run` serves the default model, `make test` checks everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
ARGS ?=

.PHONY: install run test lint typecheck unit stateful proto bench container-test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# tests: Triton's client and perf_analyzer. Its metadata pins numpy<2 and protobuf<5, which its gRPC
	# client does not need (tests/test_kserve*.py run it against ours): installed without them.
	$(BIN)/python -m pip install --quiet --no-deps 'tritonclient==2.51.0'
	rm -f $(VENV)/.installed-* && touch $@

run: install  ## serve the default model on localhost:50051 (ARGS="--port 6000 ..." to change)
	$(BIN)/vidlstm serve $(ARGS)

test: install lint typecheck unit  ## the whole suite: lint + type check + tests

lint: install  ## ruff, plus the Dockerfile and Kubernetes manifests (offline schema checks)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --quiet --strict deploy/kubernetes/*.yaml

typecheck: install  ## mypy over the package as installed: vidlstm/ plus models/, service/, clients/, tools/
	rm -rf build/typecheck && mkdir -p build/typecheck/vidlstm
	for f in vidlstm/*; do ln -s "$(CURDIR)/$$f" build/typecheck/vidlstm/; done
	for pkg in models service clients tools; do ln -s "$(CURDIR)/$$pkg" build/typecheck/vidlstm/$$pkg; done
	cd build/typecheck && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p vidlstm
	$(BIN)/mypy proto/generate.py

unit: install
	$(BIN)/python -m pytest $(ARGS)

stateful: install  ## a long run of the stateful server test (make test runs 10 examples)
	VIDLSTM_STATEFUL_EXAMPLES=$${VIDLSTM_STATEFUL_EXAMPLES:-300} $(BIN)/python -m pytest tests/test_stateful.py -p no:cacheprovider --timeout 0

proto: install  ## regenerate vidlstm/v1 stubs from proto/
	$(BIN)/python proto/generate.py

container-test: install  ## build the image with podman and test it for real (needs root or podman)
	PYTHON=$(BIN)/python .ci/container-test

bench: install  ## streaming benchmark; results go in the README
	$(BIN)/python benchmarks/bench_stream.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
