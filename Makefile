# The README's two commands are `make demo` and `make test`; everything they need is installed from here.
VENV ?= .venv
BIN := $(VENV)/bin
# The package is installed in setuptools' strict editable mode: a tree of links to the sources under build/, so
# mypy and every tool see the real `tickflow` layout. A file added or removed needs a new link tree, so the stamp
# is named after the list of packaged files and a changed list reinstalls.
PACKAGED := $(shell find events services projections -type f \( -name '*.py' -o -name '*.sql' -o -name '*.xml' \
	-o -name '*.properties' -o -name py.typed -o -name '*.html' -o -name '*.js' -o -name '*.css' -o -name '*.json' -o -path '*/vendor/*' \) \
	-not -path '*/__pycache__/*' | LC_ALL=C sort | cksum | cut -d' ' -f1)
STAMP := $(BIN)/.installed-$(PACKAGED)

.PHONY: install demo test lint bench broker-stop clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	rm -rf build/__editable__.* $(BIN)/.installed*
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=strict
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/tickflow broker start
	$(BIN)/tickflow demo

# The browser tests drive Debian's Chromium through Playwright (Playwright's own browser download cannot work here).
CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: install $(CHROMIUM)
	$(BIN)/tickflow broker start
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check events services projections tests
	$(BIN)/mypy
	$(BIN)/python -m tickflow.events.jsonschemas --check

bench: install
	$(BIN)/tickflow broker start
	$(BIN)/python -m tests.bench.steps

broker-stop:
	test ! -x $(BIN)/tickflow || $(BIN)/tickflow broker stop

clean: broker-stop
	rm -rf $(VENV) .tickflow build
