# One entry point for humans and CI. Every target builds .venv/ first from the pinned lock.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: venv test test-all lint lint-check format-check typecheck format demo protos lock k8s clean

venv: $(STAMP)

# The lock is the complete, resolved closure: installing it with --no-deps reproduces the
# environment exactly and side-steps the unsatisfiable published pins (requirements/README.md).
$(STAMP): requirements/lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements/lock.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# the default run: everything not marked slow (under 5 minutes on a 2-core machine)
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# everything, the slow tests included (the O3SRL toy, the demo, live-server properties, ...)
test-all: venv
	$(BIN)/python -m pytest

# what .ci/run checks besides the tests; `make format` rewrites files to the format config
lint: lint-check format-check typecheck

lint-check: venv
	$(BIN)/ruff check .

format-check: venv
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy safepolicy

format: venv
	$(BIN)/ruff format .

demo: venv
	$(BIN)/safepolicy demo --workdir demo-output

# Render every kustomize overlay (what `kubectl apply -k` would send); tests/test_k8s.py
# validates the same output.
k8s:
	for dir in k8s/overlays/cpu k8s/overlays/gpu k8s/kserve; do \
	  kubectl kustomize $$dir > /dev/null && echo "$$dir renders"; done

protos: venv
	$(BIN)/python -m safepolicy.server.protogen

# Re-resolve the lock from requirements/base.in (needs the registries).
lock:
	rm -rf /tmp/safepolicy-lock && $(PYTHON) -m venv /tmp/safepolicy-lock
	/tmp/safepolicy-lock/bin/pip install -q -r requirements/base.in
	/tmp/safepolicy-lock/bin/pip install -q --no-deps -r requirements/nodeps.in
	/tmp/safepolicy-lock/bin/pip freeze --all | grep -v -E '^(pip|wheel)==' > requirements/lock.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
