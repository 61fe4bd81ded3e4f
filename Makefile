# Two commands for a fresh machine:
#   make run    install, migrate, and serve the API with a worker on the embedded default
#   make test   install, start PostgreSQL and Redis if needed, run the test suite
.PHONY: run test test-loaded reliability install services labelstudio lint bench help

HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

help:
	@echo "make run | make test | make test-loaded | make reliability | make lint | make bench"

install:
	./scripts/install.sh

run: install
	.venv/bin/activeseg serve --host $(HOST) --port $(PORT)

services:
	./scripts/services.sh

# Label Studio in its own virtualenv (.venv-ls): the real-tool test runs against it.
labelstudio:
	./scripts/label_studio.sh

test: install services labelstudio
	ACTIVESEG_LABEL_STUDIO=1 .venv/bin/python -m pytest $(PYTEST_ARGS)

# The default suite with every core held by a busy loop: no test may depend on a quiet machine.
test-loaded: install services labelstudio
	ACTIVESEG_LABEL_STUDIO=1 ./scripts/loaded.sh .venv/bin/python -m pytest $(PYTEST_ARGS)

# Fault injection (worker SIGKILL, Redis and PostgreSQL restarts, failing blob writes) and the
# OpenAPI fuzz: minutes, so outside `make test`; .ci/run runs both.
reliability: install services
	.venv/bin/python -m pytest -m reliability tests/reliability $(PYTEST_ARGS)

# lint-imports: the package layers and forbidden imports of pyproject.toml [tool.importlinter].
lint: install
	.venv/bin/ruff check activeseg tests benchmarks migrations
	.venv/bin/ruff format --check activeseg tests benchmarks migrations
	.venv/bin/mypy activeseg
	.venv/bin/lint-imports

bench: install
	.venv/bin/python benchmarks/uncertainty_throughput.py
	.venv/bin/python benchmarks/model_speed.py
