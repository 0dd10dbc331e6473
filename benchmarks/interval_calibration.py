"""Split-conformal width factors for ``engine.INTERVAL_SCALE``, from earlier origins of the demo data.

The engine runs with unit factors at ``--origins`` origins ``--step`` weeks apart, the latest
``--gap`` weeks before the as-of date (so its 12 test weeks end before the backtest's first
origin, 48 weeks before), each seeing only the weeks before it. Per interval group, the lower
factor is the 90th percentile of (forecast - actual) / (forecast - lower) and the upper factor the
quantile of (actual - forecast) / (upper - forecast) that leaves 20% of the weeks outside in all
(a zero lower bound already covers every zero week, so the upper side takes the rest).

``--check`` instead scores the engine as it is (its factors) at the backtest's origins (the last
``--origins`` 12-week windows before the as-of, after every calibration week): coverage and MSIS
per interval group, over every eligible product; with ``--by-class``, per report class (the
backtest's) and interval group, with the weeks below and above the interval and without demand.

Usage (from the repository root)::

    .venv/bin/python benchmarks/interval_calibration.py --products 3000
    .venv/bin/python benchmarks/interval_calibration.py --products 10000 --check --origins 4
    .venv/bin/python benchmarks/interval_calibration.py --products 10000 --check --origins 4 --by-class
"""

from __future__ import annotations

import argparse
import datetime as dt

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=3000)
    parser.add_argument("--origins", type=int, default=8)
    parser.add_argument("--step", type=int, default=6)
    parser.add_argument("--gap", type=int, default=60, help="weeks between the latest origin and the as-of")
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--check", action="store_true", help="score the engine's factors at the backtest's origins")
    parser.add_argument("--by-class", action="store_true", help="with --check: per report class and interval group")
    args = parser.parse_args()

    from forecast_pipeline.forecasting import backtest, engine

    y, eligible_at, _ = backtest.demo_matrix(args.products, dt.date(2026, 11, 16), volume=0.9, seed=7)
    if args.check:
        check(y, eligible_at, args.origins, args.horizon, args.by_class)
        return
    profiled = dict(engine.PROFILED_CLASSES)
    engine.INTERVAL_SCALE = {}  # unit factors, no profile: the profile is divided out below
    engine.PROFILED_CLASSES = {}
    lo_scores, hi_scores = {}, {}
    for k in range(args.origins):
        cut = y.shape[1] - args.gap - k * args.step
        rows = eligible_at(cut)
        run = engine.forecast_batch(y[rows, :cut], args.horizon)
        ok = run.status == "success"
        actual = y[rows, cut : cut + args.horizon][ok]
        fc, lo, hi, group = run.forecast[ok], run.lower[ok], run.upper[ok], run.interval_group[ok]
        with np.errstate(divide="ignore", invalid="ignore"):
            s_lo = np.where(fc > lo, (fc - actual) / (fc - lo), np.where(actual < fc, np.inf, -np.inf))
            s_hi = np.where(hi > fc, (actual - fc) / (hi - fc), np.where(actual > fc, np.inf, -np.inf))
        for g in np.unique(group):
            sel = group == g
            lo_scores.setdefault(g, []).append(s_lo[sel])
            hi_scores.setdefault(g, []).append(s_hi[sel])
    print("| group | weeks | lower factor | upper factor | coverage with them | upper factor by step 1..12 | growth |")
    print("|---|---|---|---|---|---|---|")
    for g in sorted(lo_scores):
        by_step_lo, by_step_hi = np.concatenate(lo_scores[g]), np.concatenate(hi_scores[g])
        # upper factors for the profiled width (engine.PROFILED_CLASSES): scores relative to the profile
        position = (np.arange(args.horizon) - (args.horizon - 1) / 2) / max(args.horizon - 1, 1)
        profile = 1.0 + profiled.get(g, 0.0) * position
        f_lo, f_hi = factors(by_step_lo.ravel(), (by_step_hi / profile).ravel())
        coverage = float(np.mean((by_step_lo <= f_lo) & (by_step_hi <= f_hi * profile)))
        step_hi = np.array([factors(by_step_lo[:, h], by_step_hi[:, h])[1] for h in range(args.horizon)])
        # growth for engine.PROFILED_CLASSES: slope of the per-step factor over the horizon / its mean
        growth = np.polyfit(position, step_hi, 1)[0] / max(step_hi.mean(), 1e-9)
        steps = " ".join(f"{f:.2f}" for f in step_hi)
        print(f"| {g} | {by_step_lo.size:,} | {f_lo:.3f} | {f_hi:.3f} | {coverage:.1%} | {steps} | {growth:+.3f} |")


def check(y: np.ndarray, eligible_at, origins: int, horizon: int, by_class: bool = False) -> None:
    """Coverage and MSIS per interval group (or report class and interval group) at the
    backtest's origins (the last ``origins`` ``horizon``-week windows), the engine's factors as
    they are."""
    from forecast_pipeline.forecasting import backtest, engine, models

    covered, weeks, scores, below, above, zero = {}, {}, {}, {}, {}, {}
    for k in range(origins):
        cut = y.shape[1] - horizon - k * horizon
        rows = eligible_at(cut)
        history, actual = y[rows, :cut], y[rows, cut : cut + horizon]
        run = engine.forecast_batch(history, horizon)
        scale = backtest.naive_scale(history, models.first_demand_week(history))
        ok = (run.status == "success") & (scale > 0)
        inside = backtest.interval_inside(actual, run.lower, run.upper)[ok]
        score = backtest.interval_score(actual, run.lower, run.upper)[ok].mean(axis=1) / scale[ok]
        group = run.interval_group[ok].astype(str)
        if by_class:
            classes = backtest.report_classes(history, models.first_demand_week(history))[ok]
            group = np.char.add(np.char.add(classes.astype(str), " | "), group)
        for g in np.unique(group):
            sel = group == g
            covered[g] = covered.get(g, 0) + int(inside[sel].sum())
            weeks[g] = weeks.get(g, 0) + int(inside[sel].size)
            scores.setdefault(g, []).append(score[sel])
            below[g] = below.get(g, 0) + int((actual[ok][sel] < run.lower[ok][sel]).sum())
            above[g] = above.get(g, 0) + int((actual[ok][sel] > run.upper[ok][sel]).sum())
            zero[g] = zero.get(g, 0) + int((actual[ok][sel] == 0).sum())
    first = "class | group" if by_class else "group"
    print(f"| {first} | series x origins | coverage | below | above | without demand | MSIS |")
    print("|---|" + "---|" * (first.count("|") + 6))
    for g in sorted(weeks):
        msis, n = np.concatenate(scores[g]).mean(), weeks[g]
        print(
            f"| {g} | {n // horizon:,} | {covered[g] / n:.1%} | {below[g] / n:.1%} | {above[g] / n:.1%} "
            f"| {zero[g] / n:.1%} | {msis:.2f} |"
        )


def factors(s_lo: np.ndarray, s_hi: np.ndarray) -> tuple[float, float]:
    """Lower factor leaving 10% of the weeks below; upper factor leaving 20% outside in all."""
    f_lo = float(np.quantile(s_lo, 0.9, method="higher"))
    missed_low = float(np.mean(s_lo > f_lo))
    f_hi = float(np.quantile(s_hi, max(0.8 + missed_low, 0.5), method="higher"))
    return max(f_lo, 0.0), max(f_hi, 0.0)


if __name__ == "__main__":
    main()
