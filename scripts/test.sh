#!/usr/bin/env bash
# The one test command: install the project into .venv, make sure Postgres and Redis answer, lint,
# and run the whole test suite against them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
scripts/services.sh
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements.lock -e ".[dev,backtest]"

.venv/bin/ruff check .
# Bytecode for the project's own modules: where PYTHONDONTWRITEBYTECODE is set (CI machines) every
# Dagster and CLI process the tests start would otherwise recompile them (~0.6-0.9 s each).
.venv/bin/python -m compileall -q forecast_pipeline >/dev/null
# Two workers (pytest-xdist), a test file each at a time: the end-to-end file mostly waits on the
# daemon while the other worker runs the rest. Each worker has its own databases (conftest.py).
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
