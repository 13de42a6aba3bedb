# The README's two commands are `make demo` and `make test`; everything they need is installed from here.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench broker-stop clean

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	infra/kafka.sh start
	$(BIN)/tickflow demo

test: install
	infra/kafka.sh start
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check events services projections tests
	$(BIN)/mypy

bench: install
	infra/kafka.sh start
	$(BIN)/python -m tests.bench.steps

broker-stop:
	infra/kafka.sh stop

clean: broker-stop
	rm -rf $(VENV) .tickflow
