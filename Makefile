# Two commands a new user needs: `make serve` (install, migrate, serve) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
UV_VERSION := 0.13.9
EXAMPLE ?= examples/order-pipeline.json
INPUT   ?= {"order_id": "A-1001", "items": [{"sku": "pen", "qty": 3, "price": 2.5}, {"sku": "ink", "qty": 1, "price": 12.0}]}

.PHONY: install dev serve run test lint typecheck bench clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

install: $(UV)  ## runtime dependencies only, from the lock file
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --no-default-groups --quiet

dev: $(UV)  ## runtime + dev dependencies, from the lock file
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --quiet

serve: install  ## migrate the embedded database and serve the API on http://127.0.0.1:8000
	$(BIN)/flowcore serve

run: install  ## run an example workflow, printing every event as it happens
	$(BIN)/flowcore run $(EXAMPLE) --input '$(INPUT)'

test: dev  ## the whole suite: lint, types, tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: $(UV)  ## benchmark tables (engine vs asyncio floor vs LangGraph)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --extra bench --quiet
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.redis
	$(BIN)/python -m bench.parked

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
