# Everything a newcomer or CI needs: each target creates the virtual environment when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve
comma  := ,

.PHONY: install run test lint docs bench profile clean browser postgres

# `make run` installs what serving needs (the package); every other target also the dev and docs extras.
define install_package
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v in ((3, 11), (3, 12)) else "bandit-router needs CPython 3.11 or 3.12 (the code needs 3.11, and vowpal-wabbit-next 0.7.0 has no wheels past 3.12); $(PYTHON) is %d.%d: run make PYTHON=/path/to/python3.12 ..." % v)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '$(1)'
endef

$(SERVE_STAMP): pyproject.toml
	$(call install_package,.)
	touch $(SERVE_STAMP)

$(STAMP): pyproject.toml
	$(call install_package,.[dev$(comma)docs])
	touch $(SERVE_STAMP) $(STAMP)

install: $(STAMP)

# `make install`'s stamp, when at least as new as pyproject.toml, serves `make run` too: a virtualenv made by
# `make install` before `make run` had its own stamp has only that one (and the package, with the extras).
INSTALLED := $(shell [ -f '$(STAMP)' ] && [ ! pyproject.toml -nt '$(STAMP)' ] && echo '$(STAMP)')
# Asked for with a target that installs the extras (`make -j2 lint run`), `make run` waits for that one install:
# with a stamp of its own, both recipes created the virtualenv and ran pip in it at once.
WITH_EXTRAS := $(if $(filter install test lint docs bench profile,$(MAKECMDGOALS)),$(STAMP))

# No --host or --port: they would win over ./bandit-router.toml and BANDIT_ROUTER_PORT (serve's defaults are
# 127.0.0.1:8000).
run: $(or $(INSTALLED),$(WITH_EXTRAS),$(SERVE_STAMP))
	$(BIN)/bandit-router serve

# The dashboard's browser tests need Debian's Chromium: installed here when missing and running as root (CI is);
# elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "chromium is not installed (apt-get install chromium as root): the browser tests will skip"

# The PostgreSQL tests need Debian's server binaries (tests/conftest.py starts one on 127.0.0.1 as an unprivileged
# user): installed here when missing and running as root; elsewhere those tests skip and say why.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		echo "PostgreSQL is not installed (apt-get install postgresql as root): its tests will skip"

# One pytest process per core (pytest-xdist), each taking whole test files (a file's servers and browser start
# once): most of the suite's slow tests wait on a server, a browser or the clock rather than compute.
test: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=25

lint: $(STAMP)
	$(BIN)/ruff check bandit_router simulator tests benchmarks experiments tools
	$(BIN)/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

WAL_DURATION ?= 600

bench: $(STAMP)  # WAL_DURATION=60 make bench: a shorter sustained-write run (bench_wal)
	$(BIN)/python -m benchmarks.run --out benchmarks/results --wal-duration $(WAL_DURATION)

PROFILE_LABEL ?= after

profile: $(STAMP)  # where the server's CPU goes per request (py-spy under wrk) → benchmarks/results/profiles/
	$(BIN)/python -m benchmarks.profile_http --label $(PROFILE_LABEL)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
