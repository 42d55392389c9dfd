# make demo  - a store from the packaged suite, a held-out model profiled through a replay server, routing with it
# make test  - unit + integration tests (starts real Chroma and vLLM servers)
# make bench - performance benchmarks (prints tables)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/routerbench-zs
STAMP := $(VENV)/.installed
VLLM_VENV ?= .venv-vllm
TINY_MODEL ?= .tiny-model

.PHONY: venv demo test unit integration lint typecheck bench vllm-env clean

venv: $(STAMP)

# torch first, pinned to the CPU build on local disk: a bare `torch` requirement pulls a multi-GB CUDA build.
# Wheels go in uncompiled (pip compiles every file of every wheel, one at a time), then compileall compiles
# the site-packages on all cores, leaving out torch and the packages only the one-time ONNX export or the
# static distillation use: the venv builds in about 80 s instead of 130 s and imports stay compiled (which
# matters where PYTHONDONTWRITEBYTECODE is set).
PIP := $(PY) -m pip install -q --no-compile
LEAVE_UNCOMPILED := /(torch|functorch|torchgen|transformers|sympy|onnx|networkx)/
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	$(PY) -m compileall -q -j 0 -x '$(LEAVE_UNCOMPILED)' "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	touch $(STAMP)

demo: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/scope-router demo --data $(DATA)

vllm-env:
	SCOPE_VLLM_VENV=$(abspath $(VLLM_VENV)) SCOPE_TINY_MODEL_DIR=$(abspath $(TINY_MODEL)) bash scripts/vllm_env.sh

unit: venv
	$(PY) -m pytest tests/unit -q

integration: venv vllm-env
	SCOPE_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python SCOPE_TINY_MODEL=$(abspath $(TINY_MODEL)) \
		HF_HUB_OFFLINE=1 $(PY) -m pytest tests/integration -q

test: venv vllm-env
	$(VENV)/bin/lint-imports --no-cache
	SCOPE_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python SCOPE_TINY_MODEL=$(abspath $(TINY_MODEL)) \
		HF_HUB_OFFLINE=1 $(PY) -m pytest tests -q -p no:cacheprovider

lint: venv
	$(VENV)/bin/ruff check scope_shared scope_langchain scope_llamaindex tests examples benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

bench: $(VENV)/.bench-installed
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks

$(VENV)/.bench-installed: $(STAMP)
	$(PIP) -e '.[bench]'
	touch $@

clean:
	rm -rf out .scope .pytest_cache
