"""The forecast request queue against real PostgreSQL, a real Dagster instance and real run processes."""

import datetime as dt
import io
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, build_sensor_context, materialize

from forecast_pipeline.app_db.queue_tables import forecast_requests
from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.defs.forecast_queue.sensors import (
    carry_out_cancel_requests,
    finish_request_for_run,
    forecast_request_queue,
    recover_stale_requests,
)
from forecast_pipeline.defs.forecasts.assets import eligible_products, forecast_predictions, product_forecasts
from forecast_pipeline.forecast_queue import request_queue
from forecast_pipeline.json_logging import log_json_lines
from forecast_pipeline.resources import AppDatabase
from forecast_pipeline.settings import load_settings
from forecast_pipeline_tests.conftest import AS_OF, BIN, POSTGRES_URL, REDIS_URL, engine_url, forecast_resources

HISTORY_START = dt.date(2019, 1, 1)


def empty_queue(pg):
    """The application tables, empty, in the Postgres test database."""
    with pg.begin() as conn:
        for table in ("forecast_request_audit", "forecast_requests", "forecast_predictions"):
            # CASCADE: the compatibility views (forecast_jobs, forecast_job_audit) depend on them
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    upgrade_app_schema(pg)
    return pg


@pytest.fixture
def queue(pg):
    return empty_queue(pg)


def request_row(engine, request_id):
    with engine.connect() as conn:
        return conn.execute(sa.select(forecast_requests).where(forecast_requests.c.id == request_id)).one()


# ---- parameters and backoff (pure) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{not json", "must be a JSON object, got a JSON string '{not json'"),
        ([1, 2], "must be a JSON object"),
        ({}, "need as_of_date, or from and to"),
        ({"as_of_date": "2025-13-40"}, "as_of_date='2025-13-40' is not a YYYY-MM-DD date"),
        ({"as_of_date": "2018-06-01"}, "before the history start 2019-01-01"),
        ({"as_of_date": "2031-01-01"}, "is in the future"),
        ({"from": "2025-11-10", "to": "2025-11-01"}, "from 2025-11-10 is after to 2025-11-01"),
        ({"as_of_date": "2025-11-10", "from": "2025-11-01", "to": "2025-11-02"}, "not both"),
        ({"as_of_date": "2025-11-10", "product_ids": "7"}, "product_ids must be a non-empty list of integers"),
        ({"as_of_date": "2025-11-10", "products": [7]}, "unknown parameter(s) ['products']"),
        # forms Python's fromisoformat takes that the CLI refuses, as the legacy worker's rows never had
        # them: a JSON number, a basic-format date, ISO week dates (2025W01 is 2024-12-30)
        ({"as_of_date": 20251110}, "as_of_date=20251110 is not a YYYY-MM-DD date"),
        ({"as_of_date": "20251110"}, "as_of_date='20251110' is not a YYYY-MM-DD date"),
        ({"from": "2025W01", "to": "2025-11-01"}, "from='2025W01' is not a YYYY-MM-DD date"),
    ],
)
def test_bad_parameters_say_what_is_wrong(parameters, message):
    with pytest.raises(request_queue.BadRequestParameters) as info:
        request_queue.parse_parameters(parameters, HISTORY_START, dt.date(2026, 11, 23))
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["idempotency_key", "concurrency_key"])
def test_a_blank_key_is_refused_not_shared_by_every_request_that_gives_it(queue, key):
    """An unset shell variable (--idempotency-key "$KEY") gave every later request the key '':
    each was answered with the first one's id and queued nothing (found by a hunting helper)."""
    with pytest.raises(ValueError, match=f"{key} must not be blank"):
        request_queue.enqueue(queue, as_of_date=AS_OF, **{key: " "})


def test_parameters_give_partitions_and_products():
    request = request_queue.parse_parameters(
        {"from": "2025-11-08", "to": "2025-11-10", "product_ids": [5, 3, 5]}, HISTORY_START, dt.date(2026, 1, 1)
    )
    assert request.partition_keys == ["2025-11-08", "2025-11-09", "2025-11-10"]
    assert request.product_ids == (3, 5)


def test_product_ids_span_the_signed_64_bit_range_as_the_forecasts_do():
    """Ids are exact over the whole signed 64-bit range (README): the pipeline forecasts -5 and
    -(2^63)+1, so a request may name them; past the range is refused."""
    request = request_queue.parse_parameters(
        {"as_of_date": "2025-11-10", "product_ids": [-5, -(2**63), 2**63 - 1]}, HISTORY_START, dt.date(2026, 1, 1)
    )
    assert request.product_ids == (-(2**63), -5, 2**63 - 1)
    for outside in (2**63, -(2**63) - 1):
        with pytest.raises(request_queue.BadRequestParameters, match="product_ids"):
            request_queue.parse_parameters(
                {"as_of_date": "2025-11-10", "product_ids": [outside]}, HISTORY_START, dt.date(2026, 1, 1)
            )


def test_backoff_doubles_with_jitter_and_is_capped():
    rng = random.Random(1)
    for attempt, (low, high) in {1: (30, 60), 2: (60, 120), 3: (120, 240), 10: (1800, 3600)}.items():
        delays = [request_queue.retry_delay(attempt, 60, 3600, rng) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high
        assert max(delays) - min(delays) > (high - low) * 0.5  # jittered, not constant


# ---- claiming -------------------------------------------------------------------------------


def test_a_thousand_requests_four_claimers_each_claimed_exactly_once(queue):
    with queue.begin() as conn:
        conn.execute(
            forecast_requests.insert(),
            [{"parameters": {"as_of_date": "2025-11-10"}, "priority": i % 3} for i in range(1000)],
        )
    claimed: list[list[int]] = [[] for _ in range(4)]
    engines = [sa.create_engine(engine_url(queue)) for _ in range(4)]
    barrier = threading.Barrier(4)

    def claimer(n: int) -> None:
        barrier.wait()
        while batch := request_queue.claim_due_requests(engines[n], limit=7):
            claimed[n].extend(request.id for request in batch)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    everything = [i for ids in claimed for i in ids]
    assert len(everything) == 1000 and len(set(everything)) == 1000
    assert all(len(ids) > 50 for ids in claimed), [len(ids) for ids in claimed]  # all four took part
    with queue.connect() as conn:
        statuses = conn.execute(sa.text("SELECT status, count(*) FROM forecast_requests GROUP BY status")).all()
    assert dict(statuses) == {"claimed": 1000}
    for engine in engines:
        engine.dispose()


def test_priority_first_then_age(queue):
    low_old = request_queue.enqueue(queue, as_of_date=AS_OF, priority=0)
    high = request_queue.enqueue(queue, as_of_date=AS_OF, priority=5)
    low_new = request_queue.enqueue(queue, as_of_date=AS_OF, priority=0)
    mid = request_queue.enqueue(queue, as_of_date=AS_OF, priority=2)
    order = [request.id for request in request_queue.claim_due_requests(queue, limit=10)]
    assert order == [high, mid, low_old, low_new]


def other_consumers_request(conn: sa.Connection, **values) -> int:
    """A row of another request type ('report'), queued unless ``values`` say otherwise."""
    row = {"request_type": "report", "parameters": {"as_of_date": AS_OF.isoformat()}, **values}
    return conn.execute(forecast_requests.insert().values(row).returning(forecast_requests.c.id)).scalar_one()


def test_only_forecast_requests_are_claimed(queue):
    forecast = request_queue.enqueue(queue, as_of_date=AS_OF)
    with queue.begin() as conn:
        other = other_consumers_request(conn)
    assert [request.id for request in request_queue.claim_due_requests(queue, limit=10)] == [forecast]
    with queue.connect() as conn:
        status = conn.execute(sa.select(forecast_requests.c.status).where(forecast_requests.c.id == other)).scalar_one()
    assert status == "queued"  # left for its own consumer, not failed


def test_not_before_holds_a_request_back(queue):
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    request_queue.enqueue(queue, as_of_date=AS_OF, not_before=later)
    assert request_queue.claim_due_requests(queue, limit=10) == []


def test_one_busy_concurrency_key_never_keeps_a_free_slot_from_other_requests(queue):
    """One tenant's key running with 30 more of its requests queued at a higher priority (a
    per-date backfill): the claim scanned the first rows only, all of that key, and claimed nothing,
    leaving a slot idle and every other request waiting (found by a hunting helper)."""
    first = request_queue.enqueue(queue, as_of_date=AS_OF, priority=5, concurrency_key="tenant-42")
    assert [r.id for r in request_queue.claim_due_requests(queue, limit=10, capacity=2)] == [first]
    for _ in range(30):
        request_queue.enqueue(queue, as_of_date=AS_OF, priority=5, concurrency_key="tenant-42")
    other = request_queue.enqueue(queue, as_of_date=AS_OF, priority=0, concurrency_key="tenant-7")
    plain = request_queue.enqueue(queue, as_of_date=AS_OF, priority=0)
    assert [r.id for r in request_queue.claim_due_requests(queue, limit=10, capacity=3)] == [other, plain]


def test_requests_sharing_a_concurrency_key_never_run_together(queue):
    first = request_queue.enqueue(queue, as_of_date=AS_OF, concurrency_key="tenant-a")
    second = request_queue.enqueue(queue, as_of_date=AS_OF, concurrency_key="tenant-a")
    other = request_queue.enqueue(queue, as_of_date=AS_OF, concurrency_key="tenant-b")
    assert [j.id for j in request_queue.claim_due_requests(queue, limit=10)] == [first, other]
    assert request_queue.claim_due_requests(queue, limit=10) == []  # tenant-a is busy
    # the database itself refuses a second running request with the key
    with pytest.raises(sa.exc.IntegrityError), queue.begin() as conn:
        conn.execute(forecast_requests.update().where(forecast_requests.c.id == second).values(status="running"))
    request_queue.mark_succeeded(queue, first, "run-1", 12)
    assert [j.id for j in request_queue.claim_due_requests(queue, limit=10)] == [second]


def test_a_failed_run_is_retried_with_backoff_then_failed(queue):
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF, max_attempts=2)
    request_queue.claim_due_requests(queue, limit=1)
    before = dt.datetime.now(dt.UTC)
    assert request_queue.mark_failed(queue, request_id, "boom", base_seconds=100, max_seconds=1000) == "queued"
    row = request_row(queue, request_id)
    wait = (row.not_before - before).total_seconds()
    assert 49 <= wait <= 101, wait
    assert row.error == "boom" and row.attempts == 1
    with queue.begin() as conn:  # time passes
        conn.execute(forecast_requests.update().values(not_before=sa.func.now()))
    assert request_queue.claim_due_requests(queue, limit=1)[0].attempts == 2
    assert request_queue.mark_failed(queue, request_id, "boom again", base_seconds=100) == "failed"
    row = request_row(queue, request_id)
    assert row.status == "failed" and row.finished_at is not None and row.error == "boom again"
    events = [a.event for a in request_queue.audit_entries(queue, request_id)]
    assert events == ["queued", "claimed", "run_failed", "claimed", "failed"]


def test_a_stale_close_for_an_old_attempt_is_ignored(queue):
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)
    request_queue.mark_failed(queue, request_id, "first attempt died", base_seconds=0)
    request_queue.claim_due_requests(queue, limit=1)  # attempt 2 running
    assert request_queue.mark_failed(queue, request_id, "late news about attempt 1", attempt=1) is None
    assert not request_queue.mark_succeeded(queue, request_id, "run-1", 10, attempt=1)
    assert request_row(queue, request_id).status == "claimed"


# ---- sensors against a real instance --------------------------------------------------------


def evaluate_queue_sensor(instance, engine):
    resources = {"app_db": AppDatabase(url=engine_url(engine))}
    with build_sensor_context(instance=instance, resources=resources) as context:
        return forecast_request_queue(context)


def test_the_queue_sensor_launches_one_run_per_request_and_fails_bad_rows(queue, redis_client):
    good = request_queue.enqueue(queue, as_of_date=AS_OF, product_ids=[3, 4])
    span = request_queue.enqueue(queue, date_range=("2025-11-03", "2025-11-10"), priority=1)
    with queue.begin() as conn:
        malformed = conn.execute(
            forecast_requests.insert().values(parameters={"as_of_date": "yesterday"}).returning(forecast_requests.c.id)
        ).scalar_one()
        early = conn.execute(
            forecast_requests.insert().values(parameters={"as_of_date": "2015-01-01"}).returning(forecast_requests.c.id)
        ).scalar_one()
    with DagsterInstance.ephemeral() as instance:
        result = evaluate_queue_sensor(instance, queue)
    requests = {r.tags[request_queue.REQUEST_ID_TAG]: r for r in result.run_requests}
    assert set(requests) == {str(good), str(span)}
    assert requests[str(good)].partition_key == "2025-11-10"
    assert requests[str(good)].run_key == f"forecast-request-{good}-attempt-1"
    assert requests[str(good)].run_config["ops"]["product_forecasts"]["config"]["product_ids"] == [3, 4]
    assert requests[str(span)].tags["dagster/asset_partition_range_start"] == "2025-11-03"
    assert requests[str(span)].tags["dagster/asset_partition_range_end"] == "2025-11-10"
    assert "is not a YYYY-MM-DD date" in request_row(queue, malformed).error
    assert request_row(queue, malformed).status == "failed" and request_row(queue, early).status == "failed"
    assert "before the history start" in request_row(queue, early).error
    assert request_row(queue, good).status == "claimed" and request_row(queue, span).status == "claimed"
    with DagsterInstance.ephemeral() as instance:  # the next tick finds nothing new
        assert not evaluate_queue_sensor(instance, queue).run_requests


def _execute(request, database, instance, settings_env=None):
    """Run what a RunRequest asks for, in process, with the test services."""
    keys = request.partition_key or None
    tags = dict(request.tags)
    if keys is None:
        tags["dagster/asset_partition_range_start"] = request.tags["dagster/asset_partition_range_start"]
    return materialize(
        [eligible_products, product_forecasts, forecast_predictions],
        partition_key=keys,
        tags=tags,
        run_config=request.run_config or None,
        resources=forecast_resources(engine_url(database), **(settings_env or {})),
        instance=instance,
        raise_on_error=False,
    )


def add_small_book(pg_orders) -> None:
    """Five products with 40 weeks of orders each, ending at AS_OF."""
    for product in range(1, 6):
        pg_orders.weekly(product, customers=[product, product + 10], weeks=40, quantity=product)


@pytest.fixture
def small_book(queue, pg_orders):
    add_small_book(pg_orders)
    return queue


def test_request_run_success_closes_the_request_with_rows_and_duration(small_book, redis_client):
    request_id = request_queue.enqueue(small_book, as_of_date=AS_OF, product_ids=[2, 3])
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_queue_sensor(instance, small_book).run_requests
        result = _execute(request, small_book, instance)
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert finish_request_for_run(instance, small_book, run) == "succeeded"
        assert finish_request_for_run(instance, small_book, run) is None  # idempotent
    row = request_row(small_book, request_id)
    assert row.status == "succeeded" and row.rows_written == 24 and row.dagster_run_id == result.run_id
    assert row.duration_seconds > 0 and row.started_at is not None
    assert row.heartbeat_at is None  # the run's process has exited
    with small_book.connect() as conn:
        stored = conn.execute(sa.text("SELECT product_id, count(*) FROM forecast_predictions GROUP BY 1")).all()
    assert dict(stored) == {2: 12, 3: 12}


def test_reruns_upsert_predictions_without_duplicates(small_book, redis_client):
    with DagsterInstance.ephemeral() as instance:
        for _ in range(2):
            request_queue.enqueue(small_book, date_range=("2025-11-09", "2025-11-10"))
            (request,) = evaluate_queue_sensor(instance, small_book).run_requests
            result = _execute(request, small_book, instance)
            assert result.success
            finish_request_for_run(instance, small_book, instance.get_run_by_id(result.run_id))
    with small_book.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM forecast_predictions")).scalar_one()
        rows = conn.execute(sa.text("SELECT rows_written FROM forecast_requests ORDER BY id")).scalars().all()
    assert count == 2 * 5 * 12  # two as-of dates x five products x twelve weeks, whatever the reruns
    assert rows == [120, 120]


def test_an_unknown_product_fails_the_request_without_retries(small_book, redis_client):
    request_id = request_queue.enqueue(small_book, as_of_date=AS_OF, product_ids=[2, 999], max_attempts=3)
    other = request_queue.enqueue(small_book, as_of_date=AS_OF, product_ids=[2])
    with DagsterInstance.ephemeral() as instance:
        requests = evaluate_queue_sensor(instance, small_book).run_requests
        for request in requests:
            result = _execute(request, small_book, instance)
            finish_request_for_run(instance, small_book, instance.get_run_by_id(result.run_id))
    row = request_row(small_book, request_id)
    assert row.status == "failed" and row.attempts == 1
    assert "999" in row.error and "not eligible" in row.error
    assert request_row(small_book, other).status == "succeeded"


@pytest.mark.parametrize("max_attempts", [3, 1])
def test_a_run_that_never_launched_is_requeued_after_the_grace_period(queue, max_attempts):
    """On the last attempt it fails, and its audit entry still says why (it said "failed" only;
    found by a hunting helper)."""
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF, max_attempts=max_attempts)
    request_queue.claim_due_requests(queue, limit=1)
    settings = load_settings({"FORECAST_REQUEST_LAUNCH_GRACE_SECONDS": "10"})
    with DagsterInstance.ephemeral() as instance:
        assert recover_stale_requests(instance, queue, settings=settings)["no_run"] == 0  # still within grace
        with queue.begin() as conn:
            conn.execute(forecast_requests.update().values(claimed_at=sa.func.now() - dt.timedelta(minutes=5)))
        assert recover_stale_requests(instance, queue, settings=settings)["no_run"] == 1
    row = request_row(queue, request_id)
    assert row.status == ("queued" if max_attempts > 1 else "failed") and "no Dagster run was launched" in row.error
    last = request_queue.audit_entries(queue, request_id)[-1]
    assert last.event == "stale_no_run" and last.detail["status"] == row.status


def test_recovery_and_cancels_leave_other_request_types_alone(queue):
    """Rows of another request type belong to their own consumer: the forecast recovery and cancel
    passes neither requeue, fail nor cancel them, however long ago they were claimed."""
    stale = request_queue.enqueue(queue, as_of_date=AS_OF)
    to_cancel = request_queue.enqueue(queue, as_of_date=AS_OF)
    assert {r.id for r in request_queue.claim_due_requests(queue, limit=2)} == {stale, to_cancel}
    ten_minutes_ago = sa.func.now() - dt.timedelta(minutes=10)
    with queue.begin() as conn:
        conn.execute(
            forecast_requests.update().where(forecast_requests.c.id == stale).values(claimed_at=ten_minutes_ago)
        )

        def other(**values):  # claimed by the 'report' consumer, which is still working on it
            return other_consumers_request(conn, **{"status": "claimed", **values})

        others = [
            other(attempts=1, claimed_at=ten_minutes_ago),  # attempts left: would be requeued
            other(attempts=1, max_attempts=1, claimed_at=ten_minutes_ago),  # none left: would be failed
            other(attempts=1, claimed_at=sa.func.now(), cancel_requested_at=sa.func.now()),
            other(status="running", attempts=1, started_at=ten_minutes_ago, heartbeat_at=ten_minutes_ago),
        ]
    assert request_queue.cancel_request(queue, to_cancel) == "cancel requested"

    def snapshot():
        return {i: (request_row(queue, i), request_queue.audit_entries(queue, i)) for i in others}

    before = snapshot()
    settings = load_settings({"FORECAST_REQUEST_LAUNCH_GRACE_SECONDS": "10"})
    with DagsterInstance.ephemeral() as instance:
        cancels = carry_out_cancel_requests(instance, queue, settings=settings)
        recovered = recover_stale_requests(instance, queue, settings=settings)
    after = snapshot()
    for request_id in others:
        row = after[request_id][0]
        assert (row.status, row.attempts, row.error) == (before[request_id][0].status, 1, None), request_id
        assert after[request_id] == before[request_id], request_id  # not a column or audit entry changed
    # the forecast rows beside them were still handled
    assert (cancels, recovered) == (1, {"finished_unnoticed": 0, "no_run": 1, "dead_process": 0})
    assert request_row(queue, to_cancel).status == "cancelled"
    row = request_row(queue, stale)
    assert row.status == "queued" and "no Dagster run was launched" in row.error


def test_cancel_request_refuses_another_request_type(queue):
    with queue.begin() as conn:
        other = other_consumers_request(conn)
    with pytest.raises(request_queue.UnknownRequest, match=f"no forecast request {other}"):
        request_queue.cancel_request(queue, other)
    row = request_row(queue, other)
    assert (row.status, row.error, row.cancel_requested_at) == ("queued", None, None)


def test_a_killed_run_process_is_detected_requeued_and_then_completed(small_book, redis_client, tmp_path):
    """The run's process is killed with SIGKILL mid-run; its heartbeats stop; recovery requeues
    the request and marks the orphaned Dagster run failed; the next attempt completes."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    request_id = request_queue.enqueue(small_book, as_of_date=AS_OF)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DATABASE_URL": POSTGRES_URL,
        "REDIS_URL": REDIS_URL,
        "FORECAST_WORKERS": "1",
        "FORECAST_REQUEST_HEARTBEAT_SECONDS": "1",
    }
    settings = load_settings({"FORECAST_REQUEST_HEARTBEAT_SECONDS": "1", "FORECAST_REQUEST_RETRY_BASE_SECONDS": "0"})
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with DagsterInstance.get() as instance:
            (request,) = evaluate_queue_sensor(instance, small_book).run_requests
            tags = {**request.tags, "dagster/partition": request.partition_key}
            process = subprocess.Popen(
                [
                    str(BIN / "dagster"),
                    "job",
                    "execute",
                    "-m",
                    "forecast_pipeline",
                    "-j",
                    "daily_forecast",
                    "--tags",
                    json.dumps(tags),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 120
            while request_row(small_book, request_id).heartbeat_at is None:
                assert process.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "the run never sent a heartbeat"
                time.sleep(0.05)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            (run,) = instance.get_runs(RunsFilter(tags={request_queue.REQUEST_ID_TAG: str(request_id)}))
            assert run.status == DagsterRunStatus.STARTED  # orphaned: nothing will ever finish it
            assert (
                recover_stale_requests(instance, small_book, settings=settings)["dead_process"] == 0
            )  # not silent yet
            time.sleep(settings.request_stale_after_seconds + 1)
            assert recover_stale_requests(instance, small_book, settings=settings)["dead_process"] == 1
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
            row = request_row(small_book, request_id)
            assert row.status == "queued" and "stopped sending heartbeats" in row.error
            assert "stale_dead_process" in [a.event for a in request_queue.audit_entries(small_book, request_id)]

            (retry,) = evaluate_queue_sensor(instance, small_book).run_requests
            assert retry.tags[request_queue.ATTEMPT_TAG] == "2"
            result = _execute(retry, small_book, instance)
            assert result.success
            # the orphaned run's failure does not touch the new attempt
            assert finish_request_for_run(instance, small_book, instance.get_run_by_id(run.run_id), settings) is None
            finished = instance.get_run_by_id(result.run_id)
            assert finish_request_for_run(instance, small_book, finished, settings) == "succeeded"
    finally:
        del os.environ["DAGSTER_HOME"]
    row = request_row(small_book, request_id)
    assert row.status == "succeeded" and row.attempts == 2 and row.rows_written == 60


def test_each_transition_logs_one_json_line_with_the_legacy_fields(queue, caplog):
    caplog.set_level("INFO", logger=request_queue.log.name)
    handler = log_json_lines()  # as the code location and the CLI configure it
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        request_id = request_queue.enqueue(queue, date_range=("2025-11-03", "2025-11-10"))
        request_queue.claim_due_requests(queue, limit=1)
        request_queue.mark_run_started(queue, request_id, 1, "run-9")
        request_queue.mark_succeeded(queue, request_id, "run-9", 96)
    finally:
        handler.setStream(previous)
    # the record carries plain text and its fields; JSON is written once, by the formatter
    assert [r.getMessage() for r in caplog.records if r.name == request_queue.log.name] == [
        "Job claimed",
        "Job completed",
    ]
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]  # one object per line
    lines = [doc for doc in docs if doc["logger"] == request_queue.log.name]
    assert [line["message"] for line in lines] == ["Job claimed", "Job completed"]
    done = lines[-1]
    # the legacy log format's field names (a contract), although the concept is now a request
    assert {k: done[k] for k in ("job_id", "job_type", "from", "to", "rows", "error")} == {
        "job_id": request_id,
        "job_type": "forecast",
        "from": "2025-11-03",
        "to": "2025-11-10",
        "rows": 96,
        "error": None,
    }
    assert done["duration"] >= 0
    assert done["level"] == "INFO" and done["status"] == "succeeded"


def test_recovery_closes_a_finished_run_the_status_sensors_missed_after_a_grace(small_book, redis_client):
    request_id = request_queue.enqueue(small_book, as_of_date=AS_OF)
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_queue_sensor(instance, small_book).run_requests
        assert _execute(request, small_book, instance).success
        # just finished: left to forecast_request_succeeded
        assert recover_stale_requests(instance, small_book)["finished_unnoticed"] == 0
        assert request_row(small_book, request_id).status == "running"
        # the status sensor never came (daemon down): recovery closes it after the grace
        missed = load_settings({}).model_copy(update={"request_finished_grace_seconds": 0})
        assert recover_stale_requests(instance, small_book, settings=missed)["finished_unnoticed"] == 1
    row = request_row(small_book, request_id)
    assert row.status == "succeeded" and row.rows_written == 60
    assert [a.event for a in request_queue.audit_entries(small_book, request_id)][-2:] == ["succeeded", "recovered"]


def test_the_failure_sensor_says_a_request_waits_for_its_runs_process_not_that_it_is_closed(queue):
    """A failed run whose process still beats leaves its request open (recovery closes it once the
    process has exited); the sensor said "already closed" (found by a hunting helper)."""
    import logging
    import types

    from forecast_pipeline.defs.forecast_queue import sensors

    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)
    with DagsterInstance.ephemeral() as instance:
        tags = {request_queue.REQUEST_ID_TAG: str(request_id), request_queue.ATTEMPT_TAG: "1"}
        run = instance.create_run_for_job(sensors._loaded_forecast_job(), tags=tags)
        request_queue.mark_run_started(queue, request_id, 1, run.run_id)  # its process beats
        instance.report_run_failed(run, "boom")
        context = types.SimpleNamespace(
            dagster_run=instance.get_run_by_id(run.run_id), instance=instance, log=logging.getLogger("sensor")
        )
        said = sensors._close(context, AppDatabase(url=engine_url(queue))).skip_message
    assert request_row(queue, request_id).status == "running"
    assert "process still beats" in said and "already closed" not in said, said


def test_a_run_started_in_several_step_processes_is_audited_once(queue):
    """Each step process marks the run started (repeatable); each wrote a "started" audit entry
    (found by a hunting helper)."""
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)
    for _ in range(3):
        request_queue.mark_run_started(queue, request_id, 1, "run-1")
    events = [a.event for a in request_queue.audit_entries(queue, request_id)]
    assert events.count("started") == 1, events
