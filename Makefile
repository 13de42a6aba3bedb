# The README's two commands are `make demo` and `make test`; everything they need is installed from here.
# `make check` is the fast tier (no broker, under a minute); `make docs` builds the documentation site.
VENV ?= .venv
BIN := $(VENV)/bin
# The package is installed in setuptools' strict editable mode: a tree of links to the sources under build/, so
# mypy and every tool see the real `tickflow` layout. A file added or removed needs a new link tree, so the stamp
# is named after the list of packaged files and a changed list reinstalls.
PACKAGED := $(shell find events services projections -type f \( -name '*.py' -o -name '*.sql' -o -name '*.xml' \
	-o -name '*.properties' -o -name py.typed -o -name '*.html' -o -name '*.js' -o -name '*.css' -o -name '*.json' -o -path '*/vendor/*' \) \
	-not -path '*/__pycache__/*' | LC_ALL=C sort | cksum | cut -d' ' -f1)
STAMP := $(BIN)/.installed-$(PACKAGED)

.PHONY: install demo test check lint docs fast-tests bench broker-stop clean

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

# Every tier: the unit tier on two workers (no I/O, nothing to disturb), then the tiers that time real processes,
# brokers and browsers, one test at a time.
test: install $(CHROMIUM) docs
	$(BIN)/tickflow broker start
	$(BIN)/pytest -q -n 2 tests/unit
	$(BIN)/pytest -q tests/contract tests/integration tests/security

# The fast tier: lint, types, the generated files checked against the code, the docs site, and every test that needs
# no broker (the unit tier and the contract tests on their in-memory and embedded backends). The three run at once,
# each one's output kept together, and the tests on two workers: what takes longest (mypy without its cache, the
# tests' imports) overlaps on the box's two cores.
check: install
	$(MAKE) --no-print-directory --output-sync=target -j3 lint docs fast-tests

fast-tests: install
	$(BIN)/pytest -q -n 2 -m 'not integration' tests/unit tests/contract

# The docs site into build/site, warnings as errors. Not --quiet: mkdocs counts strict mode's warnings only at the
# levels it prints. The notice silenced is Material's end-of-life date (2027-05); its successor, Zensical, reads this
# same mkdocs.yml.
docs: install
	$(BIN)/python infra/docs/reference.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -f infra/docs/mkdocs.yml

lint: install
	$(BIN)/ruff check events services projections tests examples infra/docs
	$(BIN)/mypy
	$(BIN)/python -m tickflow.events.jsonschemas --check

bench: install
	$(BIN)/tickflow broker start
	$(BIN)/python -m tests.bench.steps

broker-stop:
	test ! -x $(BIN)/tickflow || $(BIN)/tickflow broker stop

clean: broker-stop
	rm -rf $(VENV) .tickflow build
