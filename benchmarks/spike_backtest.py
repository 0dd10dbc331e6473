"""What one-off spikes do to the forecasts, with and without the engine's capping.

Takes the backtest's demo history (``forecast-pipeline backtest``'s default: 10,000 products,
volume 0.9, seed 7, as-of 2026-11-16), picks ``--share`` of the products and gives each one
data-entry error: one week, in the two years before the first origin, set to ``--factor`` times
that product's median demand week (the issue's case: 1,000,000 units for a product that sells
~10 a week is 100,000x). The test weeks are left alone. Then, at the backtest's 4 origins, it
forecasts every eligible product three ways: from the clean history (the target), from the
spiked history with the engine as it is, and from the spiked history with ``models.cap_outliers``
switched off. The spiked products and the untouched ones are scored separately: WAPE (sum of
absolute errors / sum of actuals over the 12 weeks) and bias. MASE is not used: its naive scale
would include the spike.

Usage (from the repository root)::

    .venv/bin/python benchmarks/spike_backtest.py
    .venv/bin/python benchmarks/spike_backtest.py --factor 20 --share 0.02
"""

from __future__ import annotations

import argparse
import datetime as dt

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--as-of", default="2026-11-16")
    parser.add_argument("--share", type=float, default=0.02, help="share of products given one spike")
    parser.add_argument("--factor", type=float, default=100_000.0, help="spike / the product's median demand week")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from forecast_pipeline.forecasting import backtest, engine, models

    y, eligible_at, label = backtest.demo_matrix(args.products, dt.date.fromisoformat(args.as_of), volume=0.9, seed=7)
    n, t = y.shape
    horizon, step, origins = 12, 12, 4
    cuts = [t - horizon - k * step for k in range(origins)][::-1]
    rng = np.random.default_rng(args.seed)
    spiked = np.zeros(n, dtype=bool)
    spiked[rng.choice(n, size=int(args.share * n), replace=False)] = True
    dirty = y.copy()
    for row in np.flatnonzero(spiked):
        demand = y[row, : cuts[0]][y[row, : cuts[0]] > 0]
        week = rng.integers(max(cuts[0] - 2 * models.SEASON_LENGTH, 0), cuts[0])
        if len(demand):
            dirty[row, week] = args.factor * np.median(demand)
        else:
            spiked[row] = False
    print(
        f"{n:,} demo products x {t} weeks; {spiked.sum():,} given one week of {args.factor:,.0f}x their median "
        f"demand week; origins {', '.join(label(c) for c in cuts)}, horizon {horizon} weeks"
    )

    capping = models.cap_outliers
    off = lambda y, start: (y, np.zeros(len(y), dtype=np.int64))  # noqa: E731
    fields = ("series", "abs_error", "actual", "forecast", "wild", "capped")
    print("| history, engine | products | series x origins | WAPE | bias | forecast > 10x actual | weeks capped |")
    print("|---|---|---|---|---|---|---|")
    runs = (("clean history", y, capping), ("spiked, capping on", dirty, capping), ("spiked, capping off", dirty, off))
    for name, history, cap in runs:
        models.cap_outliers = cap
        totals = {group: dict.fromkeys(fields, 0.0) for group in ("spiked", "untouched")}
        for cut in cuts:
            rows = eligible_at(cut)
            batch = engine.forecast_batch(history[rows, :cut], horizon)
            ok = batch.status == "success"
            actual, forecast = y[rows, cut : cut + horizon][ok], batch.forecast[ok]
            for group, members in (("spiked", spiked[rows][ok]), ("untouched", ~spiked[rows][ok])):
                a, f = actual[members].sum(axis=1), forecast[members].sum(axis=1)
                for field, value in zip(
                    fields,
                    (
                        members.sum(),
                        np.abs(forecast[members] - actual[members]).sum(),
                        a.sum(),
                        f.sum(),
                        (f > 10 * np.maximum(a, 1)).sum(),
                        batch.outliers_capped[ok][members].sum(),
                    ),
                    strict=True,
                ):
                    totals[group][field] += value
        for group, x in totals.items():
            print(
                f"| {name} | {group} | {int(x['series']):,} | {x['abs_error'] / x['actual']:.3f} | "
                f"{x['forecast'] / x['actual'] - 1:+.1%} | {int(x['wild']):,} | {int(x['capped']):,} |"
            )
    models.cap_outliers = capping


if __name__ == "__main__":
    main()
