"""What a reader of Redis and forecast_predictions can rely on: exact ids, bad rows counted and
isolated, a quality gate that publishes both stores or neither, reruns that replace."""

import datetime as dt
import json
import time

import numpy as np
import pytest
import sqlalchemy as sa
from dagster import AssetKey

from forecast_pipeline.cache import forecast_cache, keys
from forecast_pipeline.defs.forecasts.assets import eligible_products, forecast_predictions, product_forecasts
from forecast_pipeline.defs.forecasts.checks import cached_forecasts_well_formed
from forecast_pipeline.forecasting import batch
from forecast_pipeline.source import order_history
from forecast_pipeline_tests.conftest import AS_OF, Orders, materialize_date

ASSETS = [eligible_products, product_forecasts, forecast_predictions, cached_forecasts_well_formed]
BIG_IDS = [2**53, 2**53 + 1, 2**63 - 1]
pytestmark = pytest.mark.integration


def run(database, instance, **kwargs):
    return materialize_date(ASSETS, database, instance, **kwargs)


def prediction_rows(engine, as_of=AS_OF) -> dict[int, int]:
    """Rows per product in forecast_predictions for one as-of date."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT product_id, COUNT(*) FROM forecast_predictions WHERE as_of_date = :d GROUP BY product_id"),
            {"d": as_of},
        ).all()
    return {int(p): int(n) for p, n in rows}


# --- ids ---------------------------------------------------------------------------------------


def test_ids_above_2_53_stay_exact_from_sql_to_redis_and_postgres(any_db, redis_client, instance):
    orders = Orders(any_db, first_order_id=2**62)
    for i, product in enumerate(BIG_IDS):
        # neighbouring ids with different demand: a float64 round trip would give them one history
        orders.weekly(product, customers=[2**53 + 2 * i, 2**63 - 1 - i], weeks=40, quantity=10.0 * (i + 1))
    result = run(any_db, instance)
    assert result.success
    for i, product in enumerate(BIG_IDS):
        doc = json.loads(redis_client.get(f"forecast:{product}"))
        assert doc["product_id"] == product
        assert doc["summary"]["avg_weekly_quantity"] == pytest.approx(10.0 * (i + 1), rel=0.05)
        assert doc["summary"]["active_customers"] == 2
    assert sorted(forecast_cache.read_forecasts_for(redis_client, "forecast", AS_OF.isoformat())) == BIG_IDS
    assert prediction_rows(any_db) == {p: 12 for p in BIG_IDS}


def test_a_subset_run_takes_the_largest_id(any_db, redis_client, instance):
    orders = Orders(any_db)
    for product in BIG_IDS:
        orders.weekly(product, customers=[1, 2], weeks=30, quantity=4.0)
    config = {"ops": {"product_forecasts": {"config": {"product_ids": [2**63 - 1]}}}}
    result = run(any_db, instance, run_config=config)
    assert result.success
    assert json.loads(redis_client.get(f"forecast:{2**63 - 1}"))["product_id"] == 2**63 - 1
    assert redis_client.get(f"forecast:{2**53}") is None


# --- bad rows ----------------------------------------------------------------------------------

LEFT_JOIN_QUERY = """
    SELECT oi.order_id, c.id AS customer_id, oi.product_id, o.created_at AS ordered_at, oi.quantity
    FROM order_items oi
    JOIN orders o ON oi.order_id = o.id
    LEFT JOIN customers c ON c.id = o.customer_id AND c.name <> 'gone'
"""


def test_bad_rows_are_ruled_per_row_and_counted(any_db, redis_client, instance):
    orders = Orders(any_db)
    for product in (1, 2, 3, 4):
        orders.weekly(product, customers=[10 * product, 10 * product + 1], weeks=40, quantity=10.0)
    # product 1: a customer the LEFT JOIN cannot find -> NULL customer_id on 5 lines
    for week in range(5):
        orders.add(77, 1, AS_OF - dt.timedelta(days=7 * week + 3), 10.0)
    # product 2: an unknown quantity on 3 lines (text on SQLite, NaN on Postgres)
    bad = "'lots'" if any_db.dialect.name == "sqlite" else "'NaN'"
    with any_db.begin() as conn:
        conn.execute(sa.text("UPDATE customers SET name = 'gone' WHERE id = 77"))
        ids = conn.execute(sa.text("SELECT id FROM order_items WHERE product_id = 2 ORDER BY id LIMIT 3")).scalars()
        conn.execute(sa.text(f"UPDATE order_items SET quantity = {bad} WHERE id IN ({','.join(map(str, ids))})"))
    # product 3: two returns, one of them larger than its week's sales; product 4: two zero lines
    orders.add(30, 3, AS_OF - dt.timedelta(days=10), -4.0)
    orders.add(30, 3, AS_OF - dt.timedelta(days=20), -50.0)
    orders.add(40, 4, AS_OF - dt.timedelta(days=12), 0.0)
    orders.add(41, 4, AS_OF - dt.timedelta(days=13), 0.0)

    result = run(any_db, instance, FORECAST_SOURCE_QUERY=LEFT_JOIN_QUERY)

    assert result.success
    for product in (1, 2, 3, 4):
        assert redis_client.get(f"forecast:{product}") is not None
    expected = {
        "lines_without_customer": 5,
        "lines_unknown_quantity": 3,
        "return_lines": 2,
        "zero_quantity_lines": 2,
        "weeks_floored_at_zero": 1,
    }
    meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    assert meta["data_quality"] == expected
    materialization = result.asset_materializations_for_node("product_forecasts")[0]
    assert {k: materialization.metadata[k].value for k in expected} == expected
    logs = " ".join(e.message for e in instance.all_logs(result.run_id) if e.message)
    assert "lines_unknown_quantity" in logs and "product 2" in logs
    assert "lines_without_customer" in logs and "product 1" in logs
    # a line without a customer is demand but not a customer
    product_1 = json.loads(redis_client.get("forecast:1"))
    assert product_1["summary"]["active_customers"] == 2
    assert product_1["summary"]["avg_weekly_quantity"] > 10.0


def test_returns_net_against_sales_and_a_negative_week_is_floored(any_db):
    orders = Orders(any_db)
    orders.weekly(5, customers=[1, 2], weeks=4, quantity=10.0)
    orders.add(1, 5, AS_OF - dt.timedelta(days=3), -4.0)  # last week: 10 - 4
    orders.add(1, 5, AS_OF - dt.timedelta(days=9), -25.0)  # the week before: 10 - 25 -> 0
    window = order_history.HistoryWindow(AS_OF, dt.date(2025, 9, 1), 2, 3)
    with any_db.connect() as conn:
        history = order_history.fetch_weekly_history(conn, window, [5])
    assert history.matrix[0, -2:].tolist() == [0.0, 6.0]
    assert history.quality.summary() == {
        "lines_without_customer": 0,
        "lines_unknown_quantity": 0,
        "return_lines": 2,
        "zero_quantity_lines": 0,
        "weeks_floored_at_zero": 1,
    }


def test_sales_and_returns_that_cancel_within_a_week_leave_a_week_without_demand(any_db):
    """0.1 + 0.2 - 0.3 summed in floating point is 5.6e-17, not 0: the week counted as one with
    demand (a product of 5 a week forecast at 2.1 from a longer, emptier history), and 0.3 - 0.1 -
    0.2 as a week of returns over sales (found by a hunting helper). Both reads, both databases."""
    orders = Orders(any_db)
    orders.weekly(5, customers=[1, 2], weeks=4, quantity=5.0)
    orders.add_order(1, [(5, 0.1), (5, 0.2), (5, -0.3)], AS_OF - dt.timedelta(days=7 * 15 + 3))
    orders.add_order(2, [(5, 0.3), (5, -0.1), (5, -0.2)], AS_OF - dt.timedelta(days=7 * 12 + 3))
    window = order_history.HistoryWindow(AS_OF, dt.date(2025, 1, 1), 2, 3)
    with any_db.connect() as conn:
        reads = {
            "bulk": order_history.fetch_weekly_history(conn, window, [5]),
            "grouped": order_history.sql_weekly_history(conn, window, [5]),
        }
    for name, history in reads.items():
        assert np.flatnonzero(history.matrix[0]).tolist() == list(range(window.weeks - 4, window.weeks)), name
        assert history.quality.summary()["weeks_floored_at_zero"] == 0, name


# --- the quality gate: both stores or neither --------------------------------------------------


@pytest.fixture
def book(pg):
    orders = Orders(pg)
    for product in range(1, 23):
        orders.weekly(product, customers=[product, product + 100], weeks=60, quantity=product)
    return pg


def fail_products(monkeypatch, failing_levels: set[float]):
    """Make the engine raise for rows whose weekly demand is one of these levels (a model that
    cannot fit them), as an unforeseen data problem would."""
    real = batch.forecast_batch

    def forecaster(y, horizon):
        if any(np.nanmax(row) in failing_levels for row in y):
            raise FloatingPointError("cannot fit")
        return real(y, horizon)

    monkeypatch.setattr(batch, "_shard_task", lambda y, horizon: batch.forecast_isolated(y, horizon, forecaster))


def test_over_the_failure_limit_neither_store_is_updated(book, redis_client, instance, monkeypatch):
    first = run(book, instance, as_of=AS_OF - dt.timedelta(days=7))
    assert first.success
    last_run_before = redis_client.get("forecast:metadata:last_run")
    latest_before = redis_client.get("forecast:5")
    fail_products(monkeypatch, {4.0, 6.0})  # 2 of 22 = 9% > 5%

    result = run(book, instance, raise_on_error=False)

    assert not result.success
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "failure_rate_within_limit")
    assert not evaluation.passed and evaluation.metadata["failed"].value == 2
    # the figures the health alerts read carry the gate's own counts of the whole run
    [observed] = [e.event_specific_data.asset_observation.metadata for e in result.all_events if e.is_asset_observation]
    assert (observed["run_failed"].value, observed["run_total_products"].value) == (2, 22)
    assert 0 < observed["elapsed_seconds"].value < 600  # the run's wall time, as the project asks of them
    assert redis_client.hlen(keys.history_key("forecast", AS_OF.isoformat())) == 0
    assert redis_client.get("forecast:5") == latest_before
    assert redis_client.get("forecast:metadata:last_run") == last_run_before
    assert prediction_rows(book) == {}
    assert not result.asset_materializations_for_node("product_forecasts")
    # the figures are still recorded, for the UI and the pipeline health alerts
    observation = instance.fetch_observations(AssetKey("product_forecasts"), limit=1).records[0]
    assert observation.partition_key == AS_OF.isoformat()
    assert observation.asset_observation.metadata["failed"].value == 2


def test_under_the_failure_limit_both_stores_hold_the_same_products(book, redis_client, instance, monkeypatch):
    fail_products(monkeypatch, {4.0})  # 1 of 22 = 4.5%
    result = run(book, instance)
    assert result.success
    cached = set(forecast_cache.read_forecasts_for(redis_client, "forecast", AS_OF.isoformat()))
    assert cached == set(range(1, 23)) - {4}
    assert set(prediction_rows(book)) == cached


# --- reruns replace ----------------------------------------------------------------------------


def test_a_full_rerun_replaces_the_date_and_a_subset_run_touches_only_its_products(book, redis_client, instance):
    older = AS_OF - dt.timedelta(days=7)
    run(book, instance, as_of=older)
    run(book, instance)
    assert set(prediction_rows(book)) == set(range(1, 23))
    with book.begin() as conn:  # product 7's orders turn out to be test data: it is no longer eligible
        conn.execute(sa.text("DELETE FROM order_items WHERE product_id = 7"))

    run(book, instance)

    assert set(prediction_rows(book)) == set(range(1, 23)) - {7}
    assert 7 not in forecast_cache.read_forecasts_for(redis_client, "forecast", AS_OF.isoformat())
    assert redis_client.get("forecast:7") is None  # it held this date's stale forecast
    assert 7 in prediction_rows(book, older)  # other dates are left alone

    def generated(product):
        with book.connect() as conn:
            return conn.execute(
                sa.text("SELECT MAX(generated_at) FROM forecast_predictions WHERE as_of_date = :d AND product_id = :p"),
                {"d": AS_OF, "p": product},
            ).scalar_one()

    before = {p: generated(p) for p in (3, 5)}
    config = {"ops": {"product_forecasts": {"config": {"product_ids": [3]}}}}
    time.sleep(1.1)  # generated_at has whole seconds
    result = run(book, instance, run_config=config)
    assert result.success
    assert generated(3) > before[3] and generated(5) == before[5]
    assert set(prediction_rows(book)) == set(range(1, 23)) - {7}
    rows = result.asset_materializations_for_node("forecast_predictions")[0].metadata["rows"].value
    assert rows == 12


# --- one-off spikes, end to end ----------------------------------------------------------------


def test_a_data_entry_spike_is_capped_and_counted_through_redis(pg, redis_client, instance):
    orders = Orders(pg)
    orders.weekly(8, customers=[1, 2], weeks=80, quantity=10.0)
    orders.add(1, 8, AS_OF - dt.timedelta(days=7 * 30 + 3), 1_000_000.0)  # one mistyped week
    result = run(pg, instance)
    assert result.success
    doc = json.loads(redis_client.get("forecast:8"))
    assert doc["model_metadata"]["outliers_capped"] == 1
    assert doc["summary"]["avg_weekly_quantity"] == pytest.approx(10.0, rel=0.2)
    assert json.loads(redis_client.get("forecast:metadata:last_run"))["outliers_capped"] == 1
    assert result.asset_materializations_for_node("product_forecasts")[0].metadata["outliers_capped"].value == 1
