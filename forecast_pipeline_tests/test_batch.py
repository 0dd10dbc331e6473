"""Pure logic around the models: payload shape, sharding, failure isolation, active customers."""

import datetime as dt
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecast_pipeline.forecasting.batch import forecast_isolated, forecast_payload, run_forecasts, split_rows
from forecast_pipeline.forecasting.customers import active_customers
from forecast_pipeline.forecasting.engine import forecast_batch

LEGACY_PREDICTION_KEYS = {
    "week_start",
    "week_end",
    "predicted_quantity",
    "confidence_lower",
    "confidence_upper",
    "active_customers",
}


def _steady(n: int, weeks: int = 200, level: float = 10.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(level, size=(n, weeks)).astype(float)


def test_payload_has_the_legacy_shape_and_weeks_anchored_at_the_as_of_date():
    as_of = dt.date(2025, 11, 10)
    run = run_forecasts(_steady(3), [7, 8, 9], np.array([4, 5, 6]), np.array([2.4, 1, 0]), as_of, 12, workers=1)
    doc = run.payloads[0]
    assert set(doc) == {"product_id", "as_of_date", "forecast_weeks", "predictions", "summary", "model_metadata"}
    assert doc["product_id"] == 7 and doc["as_of_date"] == "2025-11-10" and doc["forecast_weeks"] == 12
    assert set(doc["summary"]) == {"total_predicted_quantity", "active_customers", "avg_weekly_quantity"}
    assert {"model_type", "forecast_accuracy_estimate", "historical_weeks", "generated_at"} <= set(
        doc["model_metadata"]
    )
    assert doc["summary"]["active_customers"] == 4
    for k, week in enumerate(doc["predictions"]):
        assert set(week) == LEGACY_PREDICTION_KEYS
        assert week["week_start"] == (as_of + dt.timedelta(days=7 * k)).isoformat()
        assert week["week_end"] == (as_of + dt.timedelta(days=7 * k + 6)).isoformat()
        assert 0 <= week["confidence_lower"] <= week["predicted_quantity"] <= week["confidence_upper"]
        assert week["active_customers"] == 2
    total = sum(w["predicted_quantity"] for w in doc["predictions"])
    assert doc["summary"]["total_predicted_quantity"] == pytest.approx(total, abs=0.01)
    assert 0 <= doc["model_metadata"]["forecast_accuracy_estimate"] <= 1
    assert doc["model_metadata"]["generated_at"].endswith("Z")


def test_payload_rounding_keeps_the_interval_ordered():
    doc = forecast_payload(
        product_id=1,
        as_of=dt.date(2025, 1, 6),
        forecast=np.array([1.004]),
        lower=np.array([1.0049]),
        upper=np.array([1.0041]),
        active_count=1,
        weekly_buyers=0.4,
        model_type="ses",
        demand_class="smooth",
        accuracy=0.5,
        historical_weeks=10,
        generated_at="x",
    )
    week = doc["predictions"][0]
    assert week["confidence_lower"] <= week["predicted_quantity"] <= week["confidence_upper"]


def test_quantities_below_one_hundredth_keep_their_digits():
    """Two decimals suit units; a product sold by the tonne at 0.004 a week was published as a
    forecast of 0 (and its total 0). Small quantities keep three significant digits."""
    week = {"product_id": 1, "as_of": dt.date(2025, 1, 6), "active_count": 2, "weekly_buyers": 2.0}
    model = {"model_type": "ses", "demand_class": "smooth", "accuracy": 0.5, "historical_weeks": 60}
    small = forecast_payload(
        forecast=np.full(12, 0.004),
        lower=np.full(12, 0.0012345),
        upper=np.full(12, 0.00912),
        generated_at="x",
        **week,
        **model,
    )
    first = small["predictions"][0]
    assert (first["confidence_lower"], first["predicted_quantity"], first["confidence_upper"]) == (
        0.00123,
        0.004,
        0.00912,
    )
    assert small["summary"]["total_predicted_quantity"] == 0.048
    assert small["summary"]["avg_weekly_quantity"] == 0.004
    large = forecast_payload(
        forecast=np.full(12, 1234.5678),
        lower=np.zeros(12),
        upper=np.full(12, 2000.0),
        generated_at="x",
        **week,
        **model,
    )
    assert large["predictions"][0]["predicted_quantity"] == 1234.57  # two decimals, as before
    assert large["summary"]["total_predicted_quantity"] == 14814.84  # the sum of the weeks shown
    stopped = forecast_payload(  # a stopped product's forecast decays towards 0 (TSB, Croston)
        forecast=np.full(12, 3e-5), lower=np.zeros(12), upper=np.full(12, 0.3), generated_at="x", **week, **model
    )
    assert stopped["predictions"][0]["predicted_quantity"] == 0.0


def test_statuses_are_counted_and_errors_name_the_product():
    y = _steady(4)
    y[1] = 0.0  # no demand at all: no_forecast
    y[2, 50] = np.nan  # broken history: error
    run = run_forecasts(y, [10, 11, 12, 13], np.zeros(4), np.zeros(4), dt.date(2025, 11, 10), 12, workers=1)
    assert (run.total, run.successful, run.no_forecast, run.failed) == (4, 2, 1, 1)
    assert run.errors[0][0] == 12 and "non-finite" in run.errors[0][1]
    assert sorted(p["product_id"] for p in run.payloads) == [10, 13]
    assert run.failure_rate == pytest.approx(0.25)


def test_a_model_crash_costs_only_the_crashing_product():
    y = _steady(9)
    y[5, :] = 1234.0  # the marker the failing forecaster below trips on

    def fragile(block: np.ndarray, horizon: int):
        if (block == 1234.0).any():
            raise FloatingPointError("model diverged")
        return forecast_batch(block, horizon)

    result = forecast_isolated(y, 12, forecaster=fragile)
    assert list(result.status).count("error") == 1 and result.status[5] == "error"
    assert "FloatingPointError: model diverged" in result.error[5]
    assert (result.status[[0, 1, 2, 3, 4, 6, 7, 8]] == "success").all()


def test_pool_and_in_process_runs_give_identical_forecasts():
    y = _steady(2400, weeks=120, seed=3)
    ids = list(range(2400))
    zeros = np.zeros(2400)
    one = run_forecasts(y, ids, zeros, zeros, dt.date(2025, 11, 10), 12, workers=1)
    two = run_forecasts(y, ids, zeros, zeros, dt.date(2025, 11, 10), 12, workers=2)
    strip = [{**p, "model_metadata": {**p["model_metadata"], "generated_at": None}} for p in one.payloads]
    strip2 = [{**p, "model_metadata": {**p["model_metadata"], "generated_at": None}} for p in two.payloads]
    assert strip == strip2


@pytest.mark.parametrize(
    ("n", "workers", "expected"),
    [(0, 4, 0), (10, 4, 1), (2500, 10, 3), (10_000, 2, 2), (10_000, 10, 10)],
)
def test_split_rows_makes_coarse_shards(n, workers, expected):
    shards = split_rows(n, workers)
    assert len(shards) == expected
    assert sum(s.stop - s.start for s in shards) == n


def test_active_customers_excludes_churned_buyers():
    activity = pd.DataFrame(
        [
            # product 1: a weekly buyer seen last week (active), a weekly buyer gone for a year (churned)
            (1, 100, 50, 49, 0),
            (1, 101, 50, 100, 51),
            # product 1: a one-time buyer 5 weeks ago (active) and 30 weeks ago (churned)
            (1, 102, 1, 4, 4),
            (1, 103, 1, 29, 29),
            # product 2: a monthly buyer, last order 6 weeks ago (within 2.5 gaps: active)
            (2, 100, 10, 41, 5),
        ],
        columns=["product_id", "customer_id", "order_weeks", "first_week_back", "last_week_back"],
    )
    count, weekly = active_customers(activity, [1, 2, 3])
    assert count.tolist() == [2, 1, 0]
    assert weekly[0] == pytest.approx(1.0 + 1 / 13)
    assert weekly[1] == pytest.approx(0.25)  # gap = (41 - 5) / 9 = 4 weeks -> 1/4 per week
    assert weekly[2] == 0


def test_capped_outliers_are_counted_per_forecast_and_per_run():
    from forecast_pipeline.defs.forecasts.assets import _run_figures

    y = _steady(4, weeks=300)
    y[0, 250] = 1_000_000.0  # a data-entry error
    y[2, [100, 200]] = 50_000.0  # two of them
    y[3] = 0.0  # no forecast: nothing to count
    run = run_forecasts(y, [1, 2, 3, 4], np.zeros(4), np.zeros(4), dt.date(2025, 11, 10), 12, workers=1)
    capped = {p["product_id"]: p["model_metadata"]["outliers_capped"] for p in run.payloads}
    assert capped == {1: 1, 2: 0, 3: 2}
    assert run.outliers_capped == 3
    assert run.redis_metadata()["outliers_capped"] == 3
    assert _run_figures(run)["outliers_capped"] == 3
    first = run.payloads[0]
    assert first["summary"]["avg_weekly_quantity"] < 20  # ~10 a week, not ~10,000


def test_progress_is_reported_through_the_model_step_not_at_its_end():
    """A 3,000-product run in one process: one progress call per shard as it finishes, the first
    well before the step ends (all shards of a run used to finish together, at the end)."""
    y = _steady(3000, weeks=160, seed=5)
    zeros = np.zeros(3000)
    calls = []
    started = time.perf_counter()
    run = run_forecasts(
        y,
        list(range(3000)),
        zeros,
        zeros,
        dt.date(2025, 11, 10),
        12,
        workers=1,
        progress=lambda done, total: calls.append((done, total, time.perf_counter() - started)),
    )
    elapsed = time.perf_counter() - started
    assert [(done, total) for done, total, _ in calls] == [(1000, 3000), (2000, 3000), (3000, 3000)]
    assert calls[0][2] < 0.6 * elapsed, (calls, elapsed)
    assert run.successful == 3000


def test_a_pool_run_reports_each_shard():
    y = _steady(4000, weeks=120, seed=6)
    zeros = np.zeros(4000)
    calls = []
    run_forecasts(
        y,
        list(range(4000)),
        zeros,
        zeros,
        dt.date(2025, 11, 10),
        12,
        workers=2,
        progress=lambda done, total: calls.append(done),
    )
    assert calls == [1000, 2000, 3000, 4000]


def test_model_workers_do_not_run_the_launching_program_again(tmp_path):
    """Pool workers start without re-running the main module that launched them: under
    `dagster asset materialize` that is Dagster's command line, which each worker imported anew
    (seconds of CPU each) before its first product."""
    ran = tmp_path / "ran"
    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        textwrap.dedent(
            f"""
            import datetime as dt, os
            with open({str(ran)!r}, "a") as fh:
                fh.write(f"{{os.getpid()}} {{__name__}}\\n")
            if __name__ == "__main__":
                import numpy as np
                from forecast_pipeline.forecasting.batch import run_forecasts
                y = np.random.default_rng(0).poisson(3.0, size=(2400, 120)).astype(float)
                z = np.zeros(2400)
                run = run_forecasts(y, list(range(2400)), z, z, dt.date(2025, 11, 10), 12, workers=2)
                assert run.successful == 2400, run.errors[:3]
                print(__spec__, __file__)
            """
        )
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(launcher)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ran.read_text().split()[1::2] == ["__main__"]  # once, in the launcher itself
    assert done.stdout.split() == ["None", str(launcher)]  # and __main__ is as it was
