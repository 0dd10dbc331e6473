"""Time of building product_forecasts' table and chart metadata for one as-of date.

Uses real forecasts (the engine over a generated weekly matrix), so the payloads have the shape
a run hands to forecast_view. Prints the median of --repeat builds.

    .venv/bin/python benchmarks/forecast_view_benchmark.py --products 10000
"""

import argparse
import datetime as dt
import statistics
import time

import numpy as np

from forecast_pipeline.defs.forecasts import forecast_view
from forecast_pipeline.forecasting.batch import run_forecasts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--weeks", type=int, default=350, help="history weeks per product")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    history = rng.poisson(rng.gamma(1.5, 8.0, (args.products, 1)), (args.products, args.weeks)).astype(float)
    product_ids = list(range(1, args.products + 1))
    as_of = dt.date(2025, 11, 10)
    zeros = np.zeros(args.products)
    run = run_forecasts(history, product_ids, zeros, zeros, as_of=as_of, horizon=12, workers=1)
    seconds = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        metadata = forecast_view.forecast_view_metadata(run.payloads, product_ids, history, as_of)
        seconds.append(time.perf_counter() - started)
    print(
        f"{len(run.payloads)} forecasts: table of {len(metadata[forecast_view.TABLE_KEY].records)} rows and "
        f"{forecast_view.CHART_PRODUCTS} charts built in {statistics.median(seconds) * 1000:.1f} ms "
        f"(median of {args.repeat}; min {min(seconds) * 1000:.1f} ms, max {max(seconds) * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
