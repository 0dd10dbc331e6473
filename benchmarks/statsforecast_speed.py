"""CPU time per series: statsforecast's AutoETS (one series at a time) against the engine (one batch).

Both on the products eligible at as-of 2026-11-16 in the 10,000-product demo matrix, in this
process, in CPU seconds (on a shared machine wall time mostly measures the neighbours). AutoETS
gets each product's history from its first demand, with 80% intervals, after one call to compile.
Needs the ``backtest`` extra.

Usage (from the repository root)::

    .venv/bin/python benchmarks/statsforecast_speed.py --sample 200 --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=200, help="products fitted with AutoETS")
    parser.add_argument("--runs", type=int, default=3, help="engine batches")
    args = parser.parse_args()

    from statsforecast.models import AutoETS

    from forecast_pipeline import backtest
    from forecast_pipeline.forecasting import engine, models

    y, eligible_at, _ = backtest.demo_matrix(args.products, dt.date(2026, 11, 16), volume=0.9, seed=7)
    y = y[eligible_at(y.shape[1])]
    start = models.first_demand_week(y)
    pick = np.random.default_rng(0).choice(len(y), min(args.sample, len(y)), replace=False)
    AutoETS(season_length=1).forecast(y=y[pick[0], start[pick[0]] :], h=12, level=[80])  # numba compile
    began = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in pick:
            AutoETS(season_length=1).forecast(y=y[i, start[i] :], h=12, level=[80])
    ets = (time.process_time() - began) / len(pick)
    runs = []
    for _ in range(args.runs):
        began = time.process_time()
        engine.forecast_batch(y, 12)
        runs.append((time.process_time() - began) / len(y))
    eng = statistics.median(runs)
    print(
        f"AutoETS {ets * 1000:.1f} ms CPU per series ({len(pick)} products); engine {eng * 1000:.3f} ms CPU per "
        f"series (median of {args.runs} batches of {len(y):,}); the engine is {ets / eng:.0f}x faster"
    )


if __name__ == "__main__":
    main()
