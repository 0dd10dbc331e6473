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
.venv/bin/python -m pytest "$@"
