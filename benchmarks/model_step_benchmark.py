"""The model step alone: ``run_forecasts`` on the demo history of the 10,000-product benchmark.

Builds the same weekly matrix the end-to-end benchmark reads from Postgres (demo history, volume
0.9, seed 7, as-of 2026-11-16, products eligible at that date) in memory and times
``forecasting.batch.run_forecasts`` (models, intervals, JSON payloads) ``--runs`` times in one
process. No database, Redis or Dagster: on a shared machine this isolates the engine's cost from
the read and write stages, whose noise is larger than a small model change. It prints wall
seconds (as the run metadata records them) and this process's CPU seconds, which other load on
the machine disturbs less (with ``--workers`` above 1 the pool's CPU is not counted), and the
time of ``models.cap_outliers`` alone on the same blocks right after each run (its share of the
model step is the figure that survives a loaded machine).

Usage (from the repository root)::

    .venv/bin/python benchmarks/model_step_benchmark.py --runs 7

To compare with an older commit, run the same script against that commit's package::

    git archive <commit> forecast_pipeline | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/model_step_benchmark.py --runs 7
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--as-of", default="2026-11-16")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="FORECAST_WORKERS")
    args = parser.parse_args()

    import forecast_pipeline
    from forecast_pipeline.forecasting import backtest, engine, models
    from forecast_pipeline.forecasting.batch import run_forecasts

    as_of = dt.date.fromisoformat(args.as_of)
    y, eligible_at, _ = backtest.demo_matrix(args.products, as_of, volume=0.9, seed=7)
    history = y[eligible_at(y.shape[1])]
    n = len(history)
    ids, zeros = list(range(1, n + 1)), np.zeros(n)
    print(f"package: {forecast_pipeline.__file__}")
    print(f"matrix: {n:,} eligible products x {history.shape[1]} weeks")
    cap = getattr(models, "cap_outliers", None)
    blocks = [history[i : i + engine.BLOCK_ROWS] for i in range(0, n, engine.BLOCK_ROWS)]
    starts = [models.first_demand_week(b) for b in blocks]
    model, payload, cpu, capping = [], [], [], []
    for _ in range(args.runs):
        started, cpu_started = time.perf_counter(), time.process_time()
        run = run_forecasts(history, ids, zeros, zeros, as_of, 12, workers=args.workers)
        cpu.append(time.process_time() - cpu_started)
        wall = time.perf_counter() - started
        model.append(run.timings["model_seconds"])
        payload.append(run.timings["payload_seconds"])
        if cap is not None:  # the capping's own share, timed right after the run under the same load
            cap_started = time.perf_counter()
            for block, start in zip(blocks, starts, strict=True):
                cap(block, start)
            capping.append(time.perf_counter() - cap_started)
        print(f"  run: model {model[-1]:.2f} s, payload {payload[-1]:.2f} s, wall {wall:.2f} s, CPU {cpu[-1]:.2f} s")
    print(
        f"model step: median {statistics.median(model):.2f} s (min {min(model):.2f}, max {max(model):.2f}); "
        f"payload median {statistics.median(payload):.2f} s; model + payload CPU median {statistics.median(cpu):.2f} s "
        f"(min {min(cpu):.2f}); {run.successful:,} forecasts, outliers capped: {getattr(run, 'outliers_capped', 'n/a')}"
    )
    if capping:
        shares = [c / m for c, m in zip(capping, model, strict=True)]
        print(
            f"cap_outliers alone: median {statistics.median(capping) * 1000:.0f} ms, "
            f"median {statistics.median(shares):.1%} of the model step"
        )


if __name__ == "__main__":
    main()
