# Two commands for a fresh machine: `make reproduce` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vaelab-installed
# MNIST look-up (see README, Data): --data-dir, $VAELAB_DATA, the cache, then a download. A checkout
# with ../shared/data beside it (this project's offline machines) uses that when VAELAB_DATA is unset.
ifeq ($(origin VAELAB_DATA),undefined)
ifneq ($(wildcard ../shared/data/MNIST/raw),)
export VAELAB_DATA := $(abspath ../shared/data)
endif
endif

.PHONY: test reproduce install lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

reproduce: $(STAMP)
	$(BIN)/vaelab reproduce

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build src/*.egg-info
