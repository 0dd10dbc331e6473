"""The engine's intervals for new products that sell in some weeks only, on simulated data that is
not the demo's: zero-inflated demand with lumps of ~8 units (the demo's sizes are small, so a
width factor calibrated on it can be too narrow elsewhere).

Each cell is ``--per-cell`` products that sell in a share of weeks (30/50/70%), a week's demand
then being 1 + Poisson(m - 1) with m = 8 x Gamma(5, 1/5) per product, with 10 to 45 weeks of
history; the engine forecasts the next 12 weeks. Printed per cell: the 80% interval's coverage
and mean interval score (unscaled, alpha 0.2).

Usage (from the repository root)::

    .venv/bin/python benchmarks/sparse_new_products.py
"""

from __future__ import annotations

import argparse

import numpy as np


def simulate(rng: np.random.Generator, products: int, weeks: int, sells: float) -> np.ndarray:
    """``products`` rows of ``weeks`` history then 12 test weeks, from the first selling week."""
    size = 8 * rng.gamma(5, 1 / 5, products)
    total = weeks + 12
    demand = np.where(rng.random((products, total)) < sells, 1 + rng.poisson(size[:, None] - 1, (products, total)), 0)
    demand[:, 0] = 1 + rng.poisson(size - 1)  # history starts at the first sale
    return demand.astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-cell", type=int, default=400)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    from forecast_pipeline.forecasting import backtest, engine

    ages = (10, 16, 22, 30, 45)
    print("| sells in | " + " | ".join(f"{a} weeks" for a in ages) + " |")
    print("|---|" + "---|" * len(ages))
    rng = np.random.default_rng(args.seed)
    for sells in (0.3, 0.5, 0.7):
        cells = []
        for age in ages:
            y = simulate(rng, args.per_cell, age, sells)
            history, actual = y[:, :age], y[:, age:]
            run = engine.forecast_batch(history, 12)
            ok = run.status == "success"
            inside = backtest.interval_inside(actual, run.lower, run.upper)[ok].mean()
            score = backtest.interval_score(actual, run.lower, run.upper)[ok].mean()
            cells.append(f"{inside:.1%} ({score:.1f})")
        print(f"| {sells:.0%} of weeks | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
