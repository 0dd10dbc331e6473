#!/usr/bin/env bash
# One command from a fresh checkout to a cached forecast:
#   venv + install -> demo order history (SQLite) -> materialize today's partition -> print a forecast.
# Needs Python 3.11+ and a Redis answering at REDIS_URL (default redis://127.0.0.1:6379/0).
# AS_OF_DATE (this script only) picks the partition; default today.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
AS_OF=${AS_OF_DATE:-$(date -u +%F)}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "==> installing forecast_pipeline and its pinned dependencies"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements.lock -e ".[dev]"

export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster_home}
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp deploy/local/dagster.yaml "$DAGSTER_HOME/dagster.yaml"

echo "==> creating the order tables"
.venv/bin/forecast-pipeline init-db
echo "==> creating the default pipeline alerts (failure rate, runtime, age of the last run)"
.venv/bin/forecast-pipeline alerts init
echo "==> generating demo order history up to $AS_OF"
.venv/bin/forecast-pipeline demo-data --as-of "$AS_OF"
echo "==> checking configuration, database and Redis"
.venv/bin/forecast-pipeline check

echo "==> materializing eligible_products, product_forecasts and forecast_predictions for as-of $AS_OF"
# (`dagster asset materialize` does the same; Dagster warns that it is superseded by `dg launch`).
# The console shows the pipeline's INFO lines and any ERROR, not Dagster's DEBUG events (the UI's
# run log keeps every event).
.venv/bin/dg launch --assets '*' --partition "$AS_OF" --config-json '{"loggers": {"console": {"config": {"log_level": "INFO"}}}}'

echo "==> the cached result"
.venv/bin/forecast-pipeline show --as-of "$AS_OF"  # this run's date, whatever a later one cached
echo
echo "Next: DAGSTER_HOME=$DAGSTER_HOME .venv/bin/dg dev   (then open http://127.0.0.1:3000)"
