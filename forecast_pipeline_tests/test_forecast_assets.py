"""The forecast assets materialized for real: Postgres in, Redis out, a Dagster instance recording."""

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from dagster import AssetCheckSeverity, AssetKey, AssetSelection, DagsterEventType, materialize

from forecast_pipeline.app_db import predictions_store
from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.cache import forecast_cache, keys
from forecast_pipeline.defs.forecasts.assets import eligible_products, forecast_predictions, product_forecasts
from forecast_pipeline.defs.forecasts.checks import cached_forecasts_well_formed
from forecast_pipeline.defs.resources import build_resources
from forecast_pipeline.settings import load_settings
from forecast_pipeline_tests.conftest import (
    AS_OF,
    BIN,
    REDIS_URL,
    command,
    engine_url,
    forecast_resources,
    materialize_date,
    materialize_range,
)

ASSETS = [eligible_products, product_forecasts, cached_forecasts_well_formed]
WITH_PREDICTIONS = [*ASSETS, forecast_predictions]
pytestmark = pytest.mark.integration


@pytest.fixture
def book(pg, pg_orders):
    """Twenty-two products with a year of weekly orders, and one product that is not eligible."""
    for product in range(1, 23):
        pg_orders.weekly(product, customers=[product, product + 100], weeks=60, quantity=product)
    pg_orders.add(1, 99, AS_OF - dt.timedelta(days=3))
    return pg


def run(database, instance, **kwargs):
    return materialize_date(ASSETS, database, instance, **kwargs)


def test_every_eligible_product_is_cached_with_the_legacy_shape(book, redis_client, instance):
    result = run(book, instance)
    assert result.success
    ids = list(range(1, 23))
    for product in ids:
        doc = json.loads(redis_client.get(f"forecast:{product}"))
        assert doc["product_id"] == product and doc["as_of_date"] == "2025-11-10"
        assert len(doc["predictions"]) == 12 and doc["forecast_weeks"] == 12
        assert doc["predictions"][0]["week_start"] == "2025-11-10"
        assert doc["predictions"][-1]["week_end"] == "2026-02-01"
        assert all(
            0 <= w["confidence_lower"] <= w["predicted_quantity"] <= w["confidence_upper"] for w in doc["predictions"]
        )
        # a constant weekly order of `product` units is forecast at that level
        assert doc["summary"]["avg_weekly_quantity"] == pytest.approx(product, rel=0.05)
        assert doc["summary"]["active_customers"] == 2
        assert 0 < redis_client.ttl(f"forecast:{product}") <= 604800
    assert redis_client.get("forecast:99") is None
    assert sorted(forecast_cache.read_forecasts_for(redis_client, "forecast", "2025-11-10")) == ids
    meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    assert {k: meta[k] for k in ("as_of_date", "total_products", "successful", "failed", "no_forecast")} == {
        "as_of_date": "2025-11-10",
        "total_products": 22,
        "successful": 22,
        "failed": 0,
        "no_forecast": 0,
    }
    assert meta["elapsed_seconds"] > 0 and "last_run" in meta


def test_last_run_elapsed_seconds_is_the_runs_time_up_to_its_publish(book, redis_client, instance):
    """The legacy worker's ``elapsed_seconds`` was its run's wall-clock time, which dashboards and
    alerts read: not the shards' stage seconds summed (parallel shards would add up to more than
    the run took, and the eligibility read would be left out)."""
    result = run(book, instance)
    meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    record = instance.get_run_record_by_id(result.run_id)
    [publish_started] = [  # the step that publishes: every step before it counts
        e.timestamp
        for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_START)
        if e.step_key == "product_forecasts.publish_forecasts"
    ]
    assert publish_started - record.start_time <= meta["elapsed_seconds"] <= record.end_time - record.start_time
    assert meta["compute_seconds"] > 0  # the stage seconds, kept beside it


def test_the_run_figures_are_written_while_the_dates_lease_is_held(book, redis_client, instance, monkeypatch):
    """Two runs of one date publish one after the other under its lease; figures written after
    the release could land after the other run's, describing forecasts the hash no longer holds."""
    held = []
    write = forecast_cache.write_run_metadata

    def recording(client, prefix, metadata, *args, **kwargs):
        held.append(client.get(keys.lease_key(prefix, metadata["as_of_date"])) is not None)
        return write(client, prefix, metadata, *args, **kwargs)

    monkeypatch.setattr(forecast_cache, "write_run_metadata", recording)
    assert run(book, instance).success
    assert held == [True]
    assert json.loads(redis_client.get("forecast:metadata:last_run"))["successful"] == 22


def test_run_figures_are_recorded_as_metadata_observations_and_checks(book, redis_client, instance):
    result = run(book, instance)
    materialization = result.asset_materializations_for_node("product_forecasts")[0]
    assert materialization.metadata["successful"].value == 22
    assert materialization.metadata["failed"].value == 0
    observations = instance.fetch_observations(AssetKey("product_forecasts"), limit=5).records
    assert observations[0].asset_observation.metadata["total_products"].value == 22
    assert observations[0].partition_key == "2025-11-10"
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"failure_rate_within_limit": True, "cached_forecasts_well_formed": True}


def test_orders_on_or_after_the_as_of_date_do_not_change_the_forecast(book, pg_orders, redis_client, instance):
    run(book, instance)
    before = json.loads(redis_client.get("forecast:5"))
    for day in range(0, 20):
        pg_orders.add(5, 5, AS_OF + dt.timedelta(days=day), 10_000)
    run(book, instance)
    after = json.loads(redis_client.get("forecast:5"))
    assert after["predictions"] == before["predictions"]


def test_a_rerun_of_the_same_partition_is_idempotent(book, redis_client, instance):
    run(book, instance)
    first = {k: redis_client.get(k) for k in redis_client.scan_iter("forecast:*") if redis_client.type(k) == "string"}
    first_hash = redis_client.hgetall("forecast:asof:2025-11-10")
    run(book, instance)
    second = {k: redis_client.get(k) for k in redis_client.scan_iter("forecast:*") if redis_client.type(k) == "string"}
    assert set(first) == set(second)
    assert redis_client.hgetall("forecast:asof:2025-11-10").keys() == first_hash.keys()
    strip = lambda doc: {**json.loads(doc), "model_metadata": None}  # noqa: E731 - generated_at differs
    assert all(strip(first[k]) == strip(second[k]) for k in first if k.split(":")[1].isdigit())


def test_a_backfill_of_an_older_date_never_replaces_newer_forecasts(book, redis_client, instance):
    run(book, instance, as_of=AS_OF)
    older = AS_OF - dt.timedelta(weeks=4)
    result = run(book, instance, as_of=older)
    assert result.success
    assert json.loads(redis_client.get("forecast:3"))["as_of_date"] == "2025-11-10"
    assert json.loads(redis_client.get("forecast:metadata:last_run"))["as_of_date"] == "2025-11-10"
    back = forecast_cache.read_forecasts_for(redis_client, "forecast", older.isoformat())
    assert back[3]["as_of_date"] == older.isoformat()
    assert json.loads(redis_client.get(f"forecast:metadata:{older}"))["as_of_date"] == older.isoformat()
    kept = result.asset_materializations_for_node("product_forecasts")[0].metadata["latest_keys_kept_newer"].value
    assert kept == 22


def test_nan_quantities_are_left_out_and_counted_not_a_failure(book, redis_client, instance):
    with book.begin() as conn:
        conn.execute(sa.text("UPDATE order_items SET quantity = 'NaN' WHERE product_id = 4 AND id % 5 = 0"))
    result = run(book, instance)
    assert result.success
    meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    assert (meta["successful"], meta["failed"]) == (22, 0)
    assert meta["data_quality"]["lines_unknown_quantity"] == 12  # every 5th of product 4's 60 lines
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("lines_unknown_quantity: 12 (most in product 4)" in m for m in logs)


def test_redis_down_fails_at_once_naming_the_url_without_the_password(book, redis_client, instance):
    result = run(book, instance, raise_on_error=False, redis_url="redis://:hunter2@127.0.0.1:6390/0")
    assert not result.success
    errors = " ".join(str(getattr(e.event_specific_data, "error", "")) for e in result.all_events)
    assert "Redis at redis://:***@127.0.0.1:6390/0 is unreachable" in errors
    assert "hunter2" not in errors + " ".join(e.message or "" for e in result.all_events)
    # the first step pings Redis before its query, so no forecasting work was done
    started = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert started == ["eligible_products"]
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "eligible_products" and failure.step_failure_data.error.cause is None
    assert not [e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
    # nothing claims success in the real Redis
    assert redis_client.get("forecast:metadata:last_run") is None
    assert not result.asset_materializations_for_node("product_forecasts")


def test_missing_tables_fail_with_a_hint(pg, redis_client, instance):
    with pg.begin() as conn:
        conn.execute(sa.text("DROP TABLE order_items"))
    result = run(pg, instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "forecast-pipeline init-db" in str(failure.step_failure_data.error)


def test_a_run_for_some_products_updates_only_them(book, redis_client, instance):
    run(book, instance)
    before = redis_client.hlen("forecast:asof:2025-11-10")
    meta_before = redis_client.get("forecast:metadata:last_run")
    config = {"ops": {"product_forecasts": {"config": {"product_ids": [3, 5]}}}}
    result = run(book, instance, run_config=config)
    assert result.success
    materialization = result.asset_materializations_for_node("product_forecasts")[0]
    assert materialization.metadata["total_products"].value == 2
    assert redis_client.hlen("forecast:asof:2025-11-10") == before
    assert redis_client.get("forecast:metadata:last_run") == meta_before


def test_a_run_for_some_products_names_them_and_counts_the_dates_forecasts(book, redis_client, instance):
    """Its materialization becomes the date's latest in the UI: the row count is what the date's
    hash holds, and the figures and table say which products they are of."""
    assert materialize_date(WITH_PREDICTIONS, book, instance).success
    config = {"ops": {"product_forecasts": {"config": {"product_ids": [5, 3]}}}}
    result = materialize_date(WITH_PREDICTIONS, book, instance, run_config=config)
    metadata = result.asset_materializations_for_node("product_forecasts")[0].metadata
    assert metadata["dagster/row_count"].value == redis_client.hlen("forecast:asof:2025-11-10") == 22
    assert metadata["requested_products"].value == "3, 5"
    # forecast_predictions too: the date's rows in the table, not the 24 this run rewrote
    rows = result.asset_materializations_for_node("forecast_predictions")[0].metadata
    assert rows["rows"].value == 2 * 12
    assert rows["dagster/row_count"].value == 22 * 12


def test_an_unknown_product_fails_with_its_id(book, redis_client, instance):
    config = {"ops": {"product_forecasts": {"config": {"product_ids": [3, 4242]}}}}
    result = run(book, instance, raise_on_error=False, run_config=config)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "4242" in str(failure.step_failure_data.error)


def test_an_as_of_date_with_no_history_caches_nothing_and_says_so(pg, redis_client, instance):
    result = run(pg, instance, as_of=dt.date(2019, 1, 3))
    assert result.success
    meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    assert meta["total_products"] == 0 and meta["successful"] == 0


def test_a_rerun_that_finds_nothing_eligible_never_erases_a_published_date(book, redis_client, instance):
    """A source that answers with no order lines (an empty replica, a source query gone wrong)
    passed the failure-rate gate (0 of 0) and removed every forecast:{id} of the date the API was
    serving (found by a hunting helper). It fails now, saying why and how to empty the date on
    purpose; nothing of the date changes."""
    assert run(book, instance).success
    served = redis_client.get("forecast:1")
    with book.begin() as conn:
        conn.execute(sa.text("DELETE FROM order_items"))
    result = run(book, instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.step_failure_data.error)
    assert "No product is eligible" in message and "22 forecasts" in message and "empty_date" in message, message
    assert redis_client.get("forecast:1") == served
    assert json.loads(redis_client.get("forecast:metadata:last_run"))["total_products"] == 22

    on_purpose = {"ops": {"eligible_products": {"config": {"empty_date": True}}}}
    assert run(book, instance, run_config=on_purpose).success
    assert redis_client.get("forecast:1") is None


def test_a_reversed_partition_range_fails_naming_it_instead_of_materializing_nothing(book, instance):
    """`dg launch --partition-range 2025-11-10...2025-11-01` succeeded, writing materializations with
    no partition, which the asset page then showed as the newest (found by a new-user walkthrough)."""
    from forecast_pipeline_tests.conftest import engine_url, forecast_resources

    result = materialize(
        ASSETS,
        resources=forecast_resources(engine_url(book)),
        instance=instance,
        raise_on_error=False,
        tags={"dagster/asset_partition_range_start": "2025-11-10", "dagster/asset_partition_range_end": "2025-11-01"},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.step_failure_data.error)
    assert "2025-11-10...2025-11-01 holds no as-of date" in message and "start is after its end" in message, message
    assert not [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]


def test_forecasts_use_the_configured_key_prefix_and_ttl(book, redis_client, instance):
    run(book, instance, FORECAST_KEY_PREFIX="fc", FORECAST_CACHE_TTL="3600")
    assert redis_client.get("forecast:1") is None
    assert 0 < redis_client.ttl("fc:1") <= 3600
    assert json.loads(redis_client.get("fc:metadata:last_run"))["successful"] == 22


def test_a_key_prefix_with_a_trailing_colon_is_written_where_show_reads_it(
    book, redis_client, instance, monkeypatch, tmp_path
):
    """FORECAST_KEY_PREFIX=forecast: passes the settings check as ``forecast``, which ``show`` and
    the reports read under. The run's resources, built as the code location builds them (from the
    process's variables, a set one passed as ``EnvVar``), must write there too, not ``forecast::22``."""
    variables = {"DATABASE_URL": engine_url(book), "REDIS_URL": REDIS_URL, "FORECAST_WORKERS": "1"}
    for name, value in {**variables, "FORECAST_KEY_PREFIX": "forecast:"}.items():
        monkeypatch.setenv(name, value)
    resources = build_resources(load_settings())
    assert materialize(ASSETS, partition_key=AS_OF.isoformat(), resources=resources, instance=instance).success
    shown = command(
        [str(BIN / "forecast-pipeline"), "show", "--json", "--product", "22"], tmp_path, FORECAST_KEY_PREFIX="forecast:"
    )
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["metadata_key"], doc["forecast_key"]) == ("forecast:metadata:last_run", "forecast:22")
    assert doc["metadata"]["successful"] == 22 and doc["forecast"]["as_of_date"] == AS_OF.isoformat()
    assert list(redis_client.scan_iter("forecast::*")) == []


def test_redis_url_fixture_is_a_separate_database():
    assert REDIS_URL.rsplit("/", 1)[1] != "0"


def test_each_partition_of_a_range_run_carries_its_own_figures(book, pg_orders, redis_client, instance):
    days = [AS_OF - dt.timedelta(days=2), AS_OF - dt.timedelta(days=1), AS_OF]
    for customer, day in ((1, 9), (2, 5), (1, 1)):  # the third order the day before the last date
        pg_orders.add(customer, 30, AS_OF - dt.timedelta(days=day))
    result = materialize_range(WITH_PREDICTIONS, book, instance, days[0], days[-1])
    assert result.success
    figures = {
        m.partition: {k: v.value for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node("product_forecasts")
    }
    assert set(figures) == {d.isoformat() for d in days}
    totals = {p: f["total_products"] for p, f in figures.items()}
    assert totals == {days[0].isoformat(): 22, days[1].isoformat(): 22, days[2].isoformat(): 23}
    for partition, f in figures.items():
        assert f["latest_keys_written"] + f["latest_keys_kept_newer"] == f["successful"], partition
        assert f["write_seconds"] >= 0 and f["redis_history_key"] == f"forecast:asof:{partition}"
    rows = {
        m.partition: m.metadata["rows"].value for m in result.asset_materializations_for_node("forecast_predictions")
    }
    assert rows == {p: 12 * f["successful"] for p, f in figures.items()}
    assert all(f["dagster/row_count"] == f["successful"] for f in figures.values())
    eligible = {m.partition: m.metadata for m in result.asset_materializations_for_node("eligible_products")}
    assert {p: m["dagster/row_count"].value for p, m in eligible.items()} == totals
    for asset_def in (eligible_products, product_forecasts, forecast_predictions):
        schema = asset_def.specs_by_key[asset_def.key].metadata["dagster/column_schema"]
        assert "product_id" in [c.name for c in schema.columns]


def test_a_run_being_cancelled_stops_at_the_next_date_even_if_its_interrupt_is_lost(
    book, redis_client, instance, monkeypatch
):
    """Dagster terminates a run with a signal; one that lands while Python runs a weakref callback
    is dropped ("Exception ignored in ..."), and a cancelled run went on for minutes (seen in CI).
    Here the run is marked cancelling with no signal at all: it must stop before the next date."""
    from dagster import DagsterRunStatus

    from forecast_pipeline.source import order_history

    days = [AS_OF - dt.timedelta(days=2), AS_OF - dt.timedelta(days=1), AS_OF]
    read = []
    fetch = order_history.fetch_eligible_products

    def fetch_then_cancel(*args, **kwargs):
        if not read:
            (running,) = [r for r in instance.get_runs() if r.status == DagsterRunStatus.STARTED]
            instance.report_run_canceling(running)  # what `requests cancel` and max_runtime do, minus the signal
        read.append(args)
        return fetch(*args, **kwargs)

    monkeypatch.setattr(order_history, "fetch_eligible_products", fetch_then_cancel)
    result = materialize_range(ASSETS, book, instance, days[0], days[-1], raise_on_error=False)
    assert not result.success
    assert len(read) == 1  # the second and third dates were not read
    started = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert started == ["eligible_products"], started
    assert redis_client.get("forecast:1") is None


def test_redis_unreachable_while_reading_a_date_back_fails_in_one_line(book, redis_client, instance):
    """forecast_predictions and the well-formed check stream the date back from Redis: a Redis
    that does not answer then is a one-line Failure naming it, not redis-py's exception chain."""
    assert materialize_date(WITH_PREDICTIONS, book, instance).success
    result = materialize(
        WITH_PREDICTIONS,
        selection=AssetSelection.assets(forecast_predictions) | AssetSelection.checks(cached_forecasts_well_formed),
        partition_key=AS_OF.isoformat(),
        resources=forecast_resources(engine_url(book), redis_url="redis://:hunter2@127.0.0.1:6399/0"),
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    failures = {
        e.step_key: e.step_failure_data.error for e in result.all_events if e.event_type_value == "STEP_FAILURE"
    }
    assert len(failures) == 2 and "forecast_predictions" in failures, failures
    for step, error in failures.items():
        assert error.cls_name == "Failure" and error.cause is None, (step, error.message)
        line = error.message.splitlines()[0]
        assert "Redis at redis://:***@127.0.0.1:6399/0 stopped answering while reading the forecasts of 2025-11-10" in (
            line
        ), line
        assert "hunter2" not in error.message


def prediction_docs(as_of: dt.date, products, level: float) -> list[dict]:
    return [
        {
            "product_id": p,
            "as_of_date": as_of.isoformat(),
            "predictions": [
                {
                    "week_start": (as_of + dt.timedelta(weeks=w)).isoformat(),
                    "week_end": (as_of + dt.timedelta(weeks=w, days=6)).isoformat(),
                    "predicted_quantity": level * p + w,
                    "confidence_lower": 0.0,
                    "confidence_upper": level * p + w + 1.5,
                    "active_customers": 2,
                }
                for w in range(3)
            ],
            "model_metadata": {"model_type": "holt_winters", "generated_at": "2025-11-10T03:00:00Z"},
        }
        for p in products
    ]


GENERATED = dt.datetime(2025, 11, 10, 3, tzinfo=dt.UTC)


def prediction_rows(engine: sa.Engine, as_of: dt.date) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT product_id, week_start, week_end, predicted_quantity, confidence_lower, confidence_upper, "
                "active_customers, model_type, generated_at FROM forecast_predictions WHERE as_of_date = :d "
                "ORDER BY product_id, week_start"
            ),
            {"d": as_of},
        ).all()


def test_forecast_predictions_rewrites_a_date_with_the_same_rows(pg):
    """Written by COPY after deleting what is replaced: a rerun (the whole date or some products)
    leaves the same rows, never a duplicate or a conflict, and other dates untouched."""
    upgrade_app_schema(pg)
    other = AS_OF - dt.timedelta(weeks=1)
    assert predictions_store.replace(pg, other, prediction_docs(other, [1, 2], 9.0)) == 6
    assert predictions_store.replace(pg, AS_OF, prediction_docs(AS_OF, range(1, 6), 1.0)) == 15
    first = prediction_rows(pg, AS_OF)
    assert len(first) == 15
    assert first[0][1:] == (AS_OF, AS_OF + dt.timedelta(days=6), 1.0, 0.0, 2.5, 2, "holt_winters", GENERATED)
    assert predictions_store.replace(pg, AS_OF, prediction_docs(AS_OF, range(1, 6), 1.0)) == 15
    assert prediction_rows(pg, AS_OF) == first
    # some products: only theirs are replaced, docs of other products are ignored
    assert predictions_store.replace(pg, AS_OF, prediction_docs(AS_OF, [2, 3, 7], 2.0), {2, 3}) == 6
    assert predictions_store.replace(pg, AS_OF, prediction_docs(AS_OF, [2, 3, 7], 2.0), {2, 3}) == 6
    subset = prediction_rows(pg, AS_OF)
    assert [r for r in subset if r[0] not in (2, 3)] == [r for r in first if r[0] not in (2, 3)]
    assert [r[3] for r in subset if r[0] == 2] == [4.0, 5.0, 6.0]
    # a product no longer forecast loses its rows
    assert predictions_store.replace(pg, AS_OF, prediction_docs(AS_OF, [1, 2], 1.0)) == 6
    assert {r[0] for r in prediction_rows(pg, AS_OF)} == {1, 2}
    assert len(prediction_rows(pg, other)) == 6


def test_forecast_predictions_stream_is_all_or_nothing(pg):
    """The rows go to PostgreSQL in one COPY fed a few hundred forecasts at a time: many pieces
    give every row once, and an error while reading the documents (another run publishing the
    date) after some pieces were sent raises that error and leaves the date's previous rows."""
    upgrade_app_schema(pg)
    n = 3 * predictions_store.DOCS_PER_READ + 7
    assert predictions_store.replace(pg, AS_OF, prediction_docs(AS_OF, range(1, n + 1), 1.0)) == 3 * n
    before = prediction_rows(pg, AS_OF)
    assert len(before) == 3 * n and len({(r[0], r[1]) for r in before}) == 3 * n

    def raced():
        yield from prediction_docs(AS_OF, range(1, 2 * predictions_store.DOCS_PER_READ + 2), 2.0)
        raise forecast_cache.ChangedWhileReading("another run published as-of 2025-11-10")

    with pytest.raises(forecast_cache.ChangedWhileReading):
        predictions_store.replace(pg, AS_OF, raced())
    assert prediction_rows(pg, AS_OF) == before


def _prediction_dates(engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT as_of_date, count(*) FROM forecast_predictions GROUP BY as_of_date ORDER BY 1")
        ).all()
    return {d.isoformat(): n for d, n in rows}


def test_forecast_predictions_keeps_the_days_it_is_told_to_and_every_date_by_default(book, redis_client, instance):
    # nothing else deletes old as-of dates: without the setting every date stays (nothing lost)
    ancient, older, old, newest = (AS_OF - dt.timedelta(days=d) for d in (28, 14, 7, 0))
    for day in (ancient, older, old, newest):
        assert materialize_date(WITH_PREDICTIONS, book, instance, as_of=day).success
    assert set(_prediction_dates(book)) == {d.isoformat() for d in (ancient, older, old, newest)}
    per_date = _prediction_dates(book)[newest.isoformat()]

    # keep 7 days: the run of the newest date removes the dates more than 7 days before it
    result = materialize_date(WITH_PREDICTIONS, book, instance, as_of=newest, FORECAST_PREDICTIONS_KEEP_DAYS="7")
    assert result.success
    assert set(_prediction_dates(book)) == {old.isoformat(), newest.isoformat()}
    (materialization,) = result.asset_materializations_for_node("forecast_predictions")
    assert materialization.metadata["rows"].value == per_date  # what it wrote, as without retention
    assert materialization.metadata["rows_removed"].value == 2 * per_date
    assert materialization.metadata["kept_since"].value == old.isoformat()

    # a backfill of an older date keeps what it writes and the newer dates, and removes only the
    # dates more than 7 days before its own date
    assert materialize_date(WITH_PREDICTIONS, book, instance, as_of=ancient).success  # no retention: kept
    result = materialize_date(WITH_PREDICTIONS, book, instance, as_of=older, FORECAST_PREDICTIONS_KEEP_DAYS="7")
    assert result.success
    assert set(_prediction_dates(book)) == {older.isoformat(), old.isoformat(), newest.isoformat()}
    (materialization,) = result.asset_materializations_for_node("forecast_predictions")
    assert materialization.metadata["rows_removed"].value == _prediction_dates(book)[older.isoformat()]


def test_a_failing_retention_warns_and_keeps_the_run_and_its_rows(book, redis_client, instance, monkeypatch):
    # the run's own rows are written by then: a retention that cannot delete is not the run's failure
    def unreachable(engine, before):
        raise sa.exc.OperationalError("DELETE", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(predictions_store, "delete_before", unreachable)
    result = materialize_date(WITH_PREDICTIONS, book, instance, FORECAST_PREDICTIONS_KEEP_DAYS="7")
    assert result.success
    assert set(_prediction_dates(book)) == {AS_OF.isoformat()}
    (materialization,) = result.asset_materializations_for_node("forecast_predictions")
    assert "server closed the connection" in materialization.metadata["retention_error"].value


def _predictions_alone(database, instance, as_of: dt.date = AS_OF):
    """forecast_predictions alone for one date, as the UI's "Materialize" of that asset, the CLI's
    ``dagster asset materialize --select forecast_predictions`` or a backfill of it run it."""
    return materialize(
        WITH_PREDICTIONS,
        selection=[forecast_predictions.key],
        partition_key=as_of.isoformat(),
        resources=forecast_resources(engine_url(database)),
        instance=instance,
        raise_on_error=False,
    )


@pytest.mark.parametrize("gone", ["expired", "hash_deleted"])
def test_forecast_predictions_alone_fails_and_keeps_the_rows_when_the_dates_hash_left_redis(
    book, redis_client, instance, gone
):
    """After FORECAST_HISTORY_TTL the date's hash (and its run figures) have left Redis: that is
    not "no product was forecast", and rerunning forecast_predictions alone must not replace the
    date's rows with nothing. It fails naming the key and what to do, and leaves the rows."""
    assert materialize_date(WITH_PREDICTIONS, book, instance).success
    before = prediction_rows(book, AS_OF)
    assert before
    day = AS_OF.isoformat()
    expired = [keys.history_key("forecast", day)]
    if gone == "expired":  # everything of the date with FORECAST_HISTORY_TTL
        expired += [keys.metadata_key("forecast", day), keys.version_key("forecast", day)]
    assert redis_client.delete(*expired) == len(expired)

    result = _predictions_alone(book, instance)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "forecast_predictions"
    error = failure.step_failure_data.error
    assert error.cls_name == "Failure", error.message
    assert f"forecast:asof:{day} is not in Redis" in error.message, error.message
    assert f"materialize product_forecasts for {day}" in error.message, error.message
    assert prediction_rows(book, AS_OF) == before  # untouched


@pytest.mark.parametrize("expired", ["the date", "its hash only"])
def test_forecast_predictions_alone_keeps_the_rows_when_only_a_run_for_some_products_refilled_the_hash(
    book, redis_client, instance, expired
):
    """After the date expired, a run for some products (a forecast request) creates a hash holding
    just them: that hash is not the date's forecasts, and rerunning forecast_predictions alone must
    not replace every product's rows with those few. The hash expires before the full run's
    figures (its TTL is set first), and with the figures still there the few were taken for the
    date (found by a hunting helper)."""
    assert materialize_date(WITH_PREDICTIONS, book, instance).success
    before = prediction_rows(book, AS_OF)
    day = AS_OF.isoformat()
    gone = [keys.history_key("forecast", day)]
    if expired == "the date":
        gone += [keys.metadata_key("forecast", day), keys.version_key("forecast", day)]
    redis_client.delete(*gone)
    config = {"ops": {"product_forecasts": {"config": {"product_ids": [3]}}}}
    assert materialize_date(ASSETS, book, instance, run_config=config).success
    assert redis_client.hkeys(keys.history_key("forecast", day)) == ["3"]

    result = _predictions_alone(book, instance)
    assert not result.success
    assert prediction_rows(book, AS_OF) == before  # all 22 products' rows, untouched


def test_a_backfill_of_forecast_predictions_with_an_expired_date_touches_no_date(book, redis_client, instance):
    """A range run (a backfill) checks every date before writing any: one expired date fails it
    naming that date, and the dates still in Redis are not rewritten either."""
    older = AS_OF - dt.timedelta(days=1)
    assert materialize_range(WITH_PREDICTIONS, book, instance, older, AS_OF).success
    before = {day: prediction_rows(book, day) for day in (older, AS_OF)}
    assert all(before.values())
    redis_client.delete(
        keys.history_key("forecast", older.isoformat()), keys.metadata_key("forecast", older.isoformat())
    )

    result = materialize(
        WITH_PREDICTIONS,
        selection=[forecast_predictions.key],
        resources=forecast_resources(engine_url(book)),
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": older.isoformat(),
            "dagster/asset_partition_range_end": AS_OF.isoformat(),
        },
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert f"forecast:asof:{older.isoformat()} is not in Redis" in message, message
    assert f"forecast:asof:{AS_OF.isoformat()}" not in message, message
    assert {day: prediction_rows(book, day) for day in (older, AS_OF)} == before


def test_a_run_for_some_products_none_forecast_removes_only_their_rows_without_a_hash(
    pg, pg_orders, redis_client, instance
):
    """A run for some products (a forecast request) publishes just them: when none of them gets a
    forecast and the date has no hash, that means "not forecast", not "expired". Their rows go,
    the other products' stay, and the run succeeds."""
    pg_orders.weekly(7, customers=[7, 107], weeks=4)  # eligible, but too short a history to forecast
    upgrade_app_schema(pg)
    assert predictions_store.replace(pg, AS_OF, prediction_docs(AS_OF, [7, 8], 1.0)) == 6
    config = {"ops": {"product_forecasts": {"config": {"product_ids": [7]}}}}
    result = materialize_date(WITH_PREDICTIONS, pg, instance, run_config=config)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("product_forecasts")
    assert materialization.metadata["no_forecast"].value == 1
    assert redis_client.exists(keys.history_key("forecast", AS_OF.isoformat())) == 0
    assert {r[0] for r in prediction_rows(pg, AS_OF)} == {8}


def test_forecast_predictions_alone_writes_no_rows_for_a_date_published_empty(pg, redis_client, instance):
    """A date published with no forecast has no hash (Redis keeps no empty hash) but its run
    figures say so: forecast_predictions, with product_forecasts or alone, empties the date."""
    empty = dt.date(2019, 1, 3)  # no order history before it: nothing is eligible
    upgrade_app_schema(pg)
    assert predictions_store.replace(pg, empty, prediction_docs(empty, [1, 2], 1.0)) == 6
    assert materialize_date(WITH_PREDICTIONS, pg, instance, as_of=empty).success
    assert redis_client.exists(keys.history_key("forecast", empty.isoformat())) == 0
    assert prediction_rows(pg, empty) == []  # the products are no longer forecast for that date

    assert predictions_store.replace(pg, empty, prediction_docs(empty, [1, 2], 1.0)) == 6
    result = _predictions_alone(pg, instance, empty)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("forecast_predictions")
    assert materialization.metadata["rows"].value == 0
    assert prediction_rows(pg, empty) == []


@pytest.mark.parametrize("days", [-5, 36501])
def test_the_forecast_parameters_refuse_a_retention_out_of_range(days):
    # run config can set the resource past the settings' check: a negative number of days would
    # put the cut-off after the run's own date (every date deleted, the one just written included)
    from pydantic import ValidationError

    from forecast_pipeline.resources import ForecastParameters

    with pytest.raises(ValidationError, match="predictions_keep_days"):
        ForecastParameters(predictions_keep_days=days)
    assert ForecastParameters(predictions_keep_days=0).predictions_keep_days == 0  # 0: keep every date


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_a_bad_predictions_retention_is_refused_naming_the_variable(value):
    from forecast_pipeline.settings import ConfigError, load_settings

    assert load_settings({}).predictions_keep_days is None  # keep every date
    assert load_settings({"FORECAST_PREDICTIONS_KEEP_DAYS": "90"}).predictions_keep_days == 90
    with pytest.raises(ConfigError, match="FORECAST_PREDICTIONS_KEEP_DAYS=1000000 must be between 1 and 36500"):
        load_settings({"FORECAST_PREDICTIONS_KEEP_DAYS": "1000000"})  # would overflow the date arithmetic
    with pytest.raises(ConfigError, match="FORECAST_PREDICTIONS_KEEP_DAYS=.*(between 1 and 36500|not a whole number)"):
        load_settings({"FORECAST_PREDICTIONS_KEEP_DAYS": value})


def _well_formed_alone(database, instance, as_of: dt.date = AS_OF, until: dt.date | None = None):
    """``cached_forecasts_well_formed`` alone for one date (or a range up to ``until``), as the
    UI's "Execute" on the check runs it: nothing is materialized first. Its evaluation(s)."""
    tags = {"dagster/partition": as_of.isoformat()}
    if until is not None:
        tags = {
            "dagster/asset_partition_range_start": as_of.isoformat(),
            "dagster/asset_partition_range_end": str(until),
        }
    result = materialize(
        ASSETS,
        selection=AssetSelection.checks(cached_forecasts_well_formed),
        tags=tags,
        resources=forecast_resources(engine_url(database)),
        instance=instance,
        raise_on_error=False,
    )
    assert result.asset_materializations_for_node("product_forecasts") == []
    evaluations = result.get_asset_check_evaluations()
    return evaluations if until is not None else evaluations[0]


def test_the_well_formed_check_alone_on_a_date_with_nothing_cached_warns_saying_why(book, redis_client, instance):
    """A check that read no forecast has checked nothing: on a date whose keys expired
    (FORECAST_HISTORY_TTL) or that was never materialized it does not pass, as a warning (expiry
    is by design) saying so; a date whose run published no forecast passes."""
    assert run(book, instance).success
    assert _well_formed_alone(book, instance).passed
    day = AS_OF.isoformat()
    redis_client.delete(  # as FORECAST_HISTORY_TTL expires them
        keys.history_key("forecast", day), keys.metadata_key("forecast", day), keys.version_key("forecast", day)
    )
    never = AS_OF - dt.timedelta(days=7)
    for as_of in (AS_OF, never):
        evaluation = _well_formed_alone(book, instance, as_of)
        assert (evaluation.passed, evaluation.severity) == (False, AssetCheckSeverity.WARN)
        assert evaluation.metadata["cached_forecasts"].value == 0
        assert f"No cached forecasts for {as_of.isoformat()}" in evaluation.description
        assert "FORECAST_HISTORY_TTL" in evaluation.description and "never materialized" in evaluation.description
    evaluations = _well_formed_alone(book, instance, never, until=AS_OF)  # a range: one result per date
    assert len(evaluations) == 8 and {(e.passed, e.severity) for e in evaluations} == {(False, AssetCheckSeverity.WARN)}

    empty = dt.date(2019, 1, 3)  # no order history before it: the run publishes no forecast
    assert materialize_date(ASSETS, book, instance, as_of=empty).success
    evaluation = _well_formed_alone(book, instance, empty)
    assert evaluation.passed and "published no forecast" in evaluation.description
