"""The request queue under load (issue 12): claim only what can start, timeouts counted from the run's
start and enforced by Dagster, poison rows that fail alone, racing claimers, priorities, causes,
deduplication and cancellation. Real PostgreSQL, real Dagster instances and run events."""

import datetime as dt
import threading

import pytest
import sqlalchemy as sa
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    build_run_status_sensor_context,
    instance_for_test,
    materialize,
)
from dagster._core.execution.context.init import InitResourceContext
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from forecast_pipeline.app_db.queue_tables import forecast_requests
from forecast_pipeline.defs.forecast_queue.sensors import (
    finish_request_for_run,
    forecast_request_cancelled,
    forecast_request_failed,
    queue_run_timeout,
    recover_stale_requests,
    run_of,
)
from forecast_pipeline.defs.forecasts.assets import eligible_products, forecast_predictions, product_forecasts
from forecast_pipeline.forecast_queue import request_queue
from forecast_pipeline.forecast_queue.run_heartbeat import RunHeartbeat
from forecast_pipeline.resources import AppDatabase
from forecast_pipeline.settings import load_settings
from forecast_pipeline_tests.conftest import AS_OF, BIN, command, engine_url, forecast_resources
from forecast_pipeline_tests.test_request_queue import (
    _execute,
    add_small_book,
    empty_queue,
    evaluate_queue_sensor,
    request_row,
)

QUEUE_RUN_LIMIT = {
    "concurrency": {
        "runs": {
            "max_concurrent_runs": 4,
            "tag_concurrency_limits": [{"key": "dagster/sensor_name", "value": "forecast_request_queue", "limit": 2}],
        }
    }
}


@pytest.fixture
def queue(pg):
    return empty_queue(pg)


@pytest.fixture
def small_book(queue, pg_orders):
    add_small_book(pg_orders)
    return queue


# where a queued run would be launched from (the queued run coordinator requires one)
QUEUE_ORIGIN = RemoteRepositoryOrigin(
    RegisteredCodeLocationOrigin("forecast_pipeline"), "__repository__"
).get_job_origin("daily_forecast")


def insert_raw(engine, **values) -> int:
    """A request inserted by SQL, as another system would."""
    with engine.begin() as conn:
        return conn.execute(forecast_requests.insert().values(**values).returning(forecast_requests.c.id)).scalar_one()


def request_tags(request_id: int, attempt: int = 1) -> dict:
    return {request_queue.REQUEST_ID_TAG: str(request_id), request_queue.ATTEMPT_TAG: str(attempt)}


def heartbeat_resource(engine, interval: int = 15) -> RunHeartbeat:
    return RunHeartbeat(app_db=AppDatabase(url=engine_url(engine)), interval_seconds=interval)


def start_heartbeat(resource: RunHeartbeat, instance, run) -> InitResourceContext:
    """What a run's process does when it starts: initialise the heartbeat resource."""
    context = InitResourceContext(
        resource_config=None,
        resources=None,
        resource_def=None,
        all_resource_defs={},
        instance=instance,
        dagster_run=run,
    )
    resource.setup_for_execution(context)
    return context


def started_run(instance, request_id: int, attempt: int = 1):
    """A run record in status STARTED for a request attempt (its process is simulated by the test)."""
    return create_run_for_test(
        instance, job_name="daily_forecast", status=DagsterRunStatus.STARTED, tags=request_tags(request_id, attempt)
    )


def queued_run(instance, tags: dict):
    """A run waiting in Dagster's run queue (not yet launched)."""
    return create_run_for_test(
        instance, job_name="daily_forecast", status=DagsterRunStatus.QUEUED, tags=tags, remote_job_origin=QUEUE_ORIGIN
    )


def run_event(instance, run_id: str, event_type: DagsterEventType):
    records = instance.get_records_for_run(run_id, of_type=event_type).records
    return records[-1].event_log_entry.dagster_event


# ---- claim only what there is capacity to start ---------------------------------------------


def test_the_sensor_claims_no_more_than_the_run_queue_can_start(queue):
    requests = [request_queue.enqueue(queue, as_of_date=AS_OF) for _ in range(5)]
    with instance_for_test(overrides=QUEUE_RUN_LIMIT) as instance:
        first = evaluate_queue_sensor(instance, queue).run_requests
        assert len(first) == 2  # the instance lets two queue runs execute at once
        assert not evaluate_queue_sensor(instance, queue).run_requests  # both still in flight
        request_queue.mark_succeeded(queue, int(first[0].tags[request_queue.REQUEST_ID_TAG]), "run-x", 1)
        assert len(evaluate_queue_sensor(instance, queue).run_requests) == 1
    statuses = [request_row(queue, j).status for j in requests]
    assert statuses.count("queued") == 2


def test_a_request_whose_run_has_ended_frees_its_slot_before_it_is_closed(queue):
    """Capacity counts runs that are waiting or executing: a run that finished frees its slot at
    once, not when the status sensor gets round to closing its request."""
    requests = [request_queue.enqueue(queue, as_of_date=AS_OF) for _ in range(4)]
    with instance_for_test(overrides=QUEUE_RUN_LIMIT) as instance:
        first = evaluate_queue_sensor(instance, queue).run_requests
        assert len(first) == 2
        done = int(first[0].tags[request_queue.REQUEST_ID_TAG])
        run = started_run(instance, done)
        instance.report_run_failed(run, "boom")  # its process exited; the request is not closed yet
        assert request_row(queue, done).status == "claimed"
        assert len(evaluate_queue_sensor(instance, queue).run_requests) == 1
    assert [request_row(queue, j).status for j in requests].count("queued") == 1


def test_a_claimed_request_is_not_running_until_its_run_starts(small_book, redis_client):
    request_id = request_queue.enqueue(small_book, as_of_date=AS_OF)
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_queue_sensor(instance, small_book).run_requests
        claimed = request_row(small_book, request_id)
        assert claimed.status == "claimed" and claimed.started_at is None and claimed.claimed_at is not None
        result = _execute(request, small_book, instance)
        assert result.success
        started = request_row(small_book, request_id)
        assert started.status == "running" and started.started_at is not None
        assert started.dagster_run_id == result.run_id
        assert finish_request_for_run(instance, small_book, instance.get_run_by_id(result.run_id)) == "succeeded"


def test_concurrent_claimers_never_exceed_the_capacity(queue):
    engines = [sa.create_engine(engine_url(queue)) for _ in range(3)]
    try:
        for _trial in range(15):
            with queue.begin() as conn:
                conn.execute(sa.text("DELETE FROM forecast_requests"))
            for _ in range(10):
                request_queue.enqueue(queue, as_of_date=AS_OF)
            barrier = threading.Barrier(3)
            taken: list[int] = []

            def claimer(n: int, barrier=barrier, taken=taken) -> None:
                barrier.wait()
                taken.extend(
                    request.id for request in request_queue.claim_due_requests(engines[n], limit=5, capacity=2)
                )

            threads = [threading.Thread(target=claimer, args=(n,)) for n in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            assert len(taken) == 2, taken
    finally:
        for engine in engines:
            engine.dispose()


def test_time_waiting_in_dagsters_run_queue_is_not_a_timeout(queue):
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)
    settings = load_settings({"FORECAST_REQUEST_TIMEOUT_SECONDS": "60"})
    with DagsterInstance.ephemeral() as instance:
        run = queued_run(instance, request_tags(request_id))
        with queue.begin() as conn:  # claimed two hours ago; its run is still waiting for a slot
            conn.execute(
                forecast_requests.update().values(
                    claimed_at=sa.func.now() - dt.timedelta(hours=2), updated_at=sa.func.now() - dt.timedelta(hours=2)
                )
            )
        counts = recover_stale_requests(instance, queue, settings=settings)
        assert sum(counts.values()) == 0, counts
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.QUEUED
    assert request_row(queue, request_id).status == "claimed"


def test_queue_runs_carry_priority_and_the_timeout_as_dagster_tags(queue):
    low = request_queue.enqueue(queue, as_of_date=AS_OF, priority=0)
    high = request_queue.enqueue(queue, as_of_date=AS_OF, priority=9)
    monitoring = {"run_monitoring": {"enabled": True, "max_runtime_seconds": 1234}}
    with instance_for_test(overrides=monitoring) as instance:
        requests = {
            int(r.tags[request_queue.REQUEST_ID_TAG]): r for r in evaluate_queue_sensor(instance, queue).run_requests
        }
    assert requests[high].tags["dagster/priority"] == "9" and requests[low].tags["dagster/priority"] == "0"
    # run monitoring terminates a run past dagster/max_runtime, counted from the run's own start;
    # by default the queue's timeout is the instance's (dagster.yaml): one value for both
    assert requests[high].tags["dagster/max_runtime"] == "1234"


def test_the_queue_timeout_setting_overrides_the_instance_default():
    monitoring = {"run_monitoring": {"enabled": True, "max_runtime_seconds": 1234}}
    with instance_for_test(overrides=monitoring) as instance:
        assert queue_run_timeout(instance, load_settings({})) == 1234
        assert queue_run_timeout(instance, load_settings({"FORECAST_REQUEST_TIMEOUT_SECONDS": "900"})) == 900
    with DagsterInstance.ephemeral() as instance:  # no run monitoring, no limit set: no tag
        assert queue_run_timeout(instance, load_settings({})) is None


def test_a_failed_run_whose_process_still_lives_is_requeued_only_once_it_ended(queue):
    """Run monitoring marks an overrunning run failed as it terminates it; the request goes back to
    the queue only when the run's process has really stopped (its heartbeat resource tore down)."""
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)
    heartbeat = heartbeat_resource(queue)
    with DagsterInstance.ephemeral() as instance:
        run = started_run(instance, request_id)
        context = start_heartbeat(heartbeat, instance, run)
        try:
            instance.report_run_failed(run, "Exceeded maximum runtime of 60 seconds.")
            failed = instance.get_run_by_id(run.run_id)
            assert finish_request_for_run(instance, queue, failed) is None  # its process is still beating
            assert request_row(queue, request_id).status == "running"
        finally:
            heartbeat.teardown_after_execution(context)
        assert finish_request_for_run(instance, queue, failed) == "queued"
    row = request_row(queue, request_id)
    assert row.status == "queued" and "Exceeded maximum runtime of 60 seconds" in row.error


def test_a_run_timed_out_by_run_monitoring_that_ends_cancelled_is_a_failure_not_a_cancel(queue):
    """Run monitoring marks an overrunning run canceling (saying why), terminates it, then reports
    it failed; the run's own process may record it CANCELED after that, or before the failure is
    reported. Either way the request failed on its timeout: retried, with the reason, not cancelled."""
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)
    with DagsterInstance.ephemeral() as instance:
        run = started_run(instance, request_id)
        heartbeat = heartbeat_resource(queue)
        heartbeat.teardown_after_execution(start_heartbeat(heartbeat, instance, run))
        instance.report_run_canceling(run, message="Canceling due to exceeding maximum runtime of 60 seconds.")
        instance.report_run_canceled(run)
        cancelled = instance.get_run_by_id(run.run_id)
        assert cancelled.status == DagsterRunStatus.CANCELED
        assert finish_request_for_run(instance, queue, cancelled) == "queued"
    row = request_row(queue, request_id)
    assert row.status == "queued" and "Exceeded maximum runtime of 60 seconds" in row.error


def test_heartbeats_go_on_while_the_run_lives_and_stop_at_teardown(queue):
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)
    heartbeat = heartbeat_resource(queue, interval=1)
    with DagsterInstance.ephemeral() as instance:
        run = started_run(instance, request_id)
        context = start_heartbeat(heartbeat, instance, run)
        try:
            first = request_row(queue, request_id).heartbeat_at
            assert first is not None
            deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
            while request_row(queue, request_id).heartbeat_at == first:
                assert dt.datetime.now(dt.UTC) < deadline, "no heartbeat after the first"
                threading.Event().wait(0.2)
        finally:
            heartbeat.teardown_after_execution(context)
    assert request_row(queue, request_id).heartbeat_at is None  # the process is gone: nothing to wait for


def test_a_run_whose_attempt_is_no_longer_current_refuses_to_start(queue):
    """A run that starts after its request moved on (requeued, cancelled) must not execute it again."""
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)
    request_queue.mark_failed(queue, request_id, "no run came", base_seconds=0)  # requeued: attempt 1 is over
    with DagsterInstance.ephemeral() as instance:
        late = started_run(instance, request_id)
        with pytest.raises(Exception, match="no longer current"):
            start_heartbeat(heartbeat_resource(queue), instance, late)
    assert request_row(queue, request_id).status == "queued"


# ---- poison rows ----------------------------------------------------------------------------


def test_a_poison_row_fails_alone_with_its_reason_and_takes_no_capacity(queue):
    poison = insert_raw(queue, parameters={"as_of_date": AS_OF.isoformat(), "product_ids": [True]}, priority=9)
    string = insert_raw(queue, parameters=AS_OF.isoformat(), priority=8)
    good = [request_queue.enqueue(queue, as_of_date=AS_OF, product_ids=[2]) for _ in range(2)]
    with instance_for_test(overrides=QUEUE_RUN_LIMIT) as instance:
        requests = evaluate_queue_sensor(instance, queue).run_requests
    assert sorted(int(r.tags[request_queue.REQUEST_ID_TAG]) for r in requests) == good
    bad = request_row(queue, poison)
    assert bad.status == "failed" and "product_ids must be a non-empty list of integers" in bad.error
    assert bad.attempts == 0  # never claimed, never launched
    wrong = request_row(queue, string)
    assert wrong.status == "failed" and "must be a JSON object, got a JSON string" in wrong.error
    assert [a.event for a in request_queue.audit_entries(queue, poison)] == ["queued", "bad_parameters"]


def test_a_json_string_parameter_is_not_called_malformed():
    with pytest.raises(request_queue.BadRequestParameters, match="got a JSON string"):
        request_queue.parse_parameters('{"as_of_date": "2025-11-10"}', dt.date(2019, 1, 1), dt.date(2026, 1, 1))


# ---- racing claimers ------------------------------------------------------------------------


def test_two_claimers_sharing_a_concurrency_key_skip_instead_of_crashing(queue):
    engines = [sa.create_engine(engine_url(queue)) for _ in range(2)]
    errors: list[BaseException] = []
    try:
        for _trial in range(30):
            with queue.begin() as conn:
                conn.execute(sa.text("DELETE FROM forecast_requests"))
                conn.execute(
                    forecast_requests.insert(),
                    [{"parameters": {"as_of_date": AS_OF.isoformat()}, "concurrency_key": "tenant-a"}] * 12,
                )
            barrier = threading.Barrier(2)
            taken: list[int] = []

            def claimer(n: int, barrier=barrier, taken=taken) -> None:
                barrier.wait()
                try:
                    taken.extend(request.id for request in request_queue.claim_due_requests(engines[n], limit=1))
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)

            threads = [threading.Thread(target=claimer, args=(n,)) for n in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            assert not errors, errors[0]
            assert len(taken) == 1, taken
    finally:
        for engine in engines:
            engine.dispose()


def test_a_claimer_skips_rows_another_transaction_holds(queue):
    held = request_queue.enqueue(queue, as_of_date=AS_OF, priority=5)
    free = request_queue.enqueue(queue, as_of_date=AS_OF)
    locker = queue.connect()
    transaction = locker.begin()
    locker.execute(sa.select(forecast_requests.c.id).where(forecast_requests.c.id == held).with_for_update())
    result: list[int] = []
    claimer = threading.Thread(
        target=lambda: result.extend(j.id for j in request_queue.claim_due_requests(queue, limit=5))
    )
    try:
        claimer.start()
        claimer.join(timeout=10)
        assert not claimer.is_alive(), "the claim waited for a locked row instead of skipping it"
        assert result == [free]
    finally:
        transaction.rollback()
        locker.close()
        claimer.join(timeout=30)
    assert [j.id for j in request_queue.claim_due_requests(queue, limit=5)] == [held]


# ---- failure causes, through the failure sensor ---------------------------------------------


def test_a_run_level_failure_records_its_cause_through_the_failure_sensor(small_book, redis_client):
    request_id = request_queue.enqueue(small_book, as_of_date=AS_OF)
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_queue_sensor(instance, small_book).run_requests
        result = materialize(
            [eligible_products, product_forecasts, forecast_predictions],
            partition_key=request.partition_key,
            tags=request.tags,
            resources=forecast_resources(engine_url(small_book), redis_url="redis://127.0.0.1:1/0"),
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        with build_run_status_sensor_context(
            sensor_name="forecast_request_failed",
            dagster_event=run_event(instance, run.run_id, DagsterEventType.RUN_FAILURE),
            dagster_instance=instance,
            dagster_run=run,
            resources={"app_db": AppDatabase(url=engine_url(small_book))},
        ).for_run_failure() as context:
            forecast_request_failed(context)
    row = request_row(small_book, request_id)
    assert row.status == "queued", row.error
    assert "Redis at redis://127.0.0.1:1/0 is unreachable" in row.error


def test_the_duration_counts_only_the_runs_own_time(small_book, redis_client):
    request_id = request_queue.enqueue(small_book, as_of_date=AS_OF)
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_queue_sensor(instance, small_book).run_requests
        result = _execute(request, small_book, instance)
        threading.Event().wait(4)  # the daemon was down for a while before closing the request
        record = instance.get_run_record_by_id(result.run_id)
        finish_request_for_run(instance, small_book, record.dagster_run)
    ran = record.end_time - record.start_time
    assert request_row(small_book, request_id).duration_seconds == pytest.approx(ran, abs=0.01)


# ---- runs launched before the rename --------------------------------------------------------


def test_a_run_tagged_before_the_rename_is_still_started_found_and_closed(queue):
    """A run launched by ``forecast_job_queue`` before the upgrade carries ``forecast/job_id`` and
    ``forecast/job_attempt``: its process still marks the request running, the sensors still find
    its run, and the failure sensor still closes it."""
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF, max_attempts=2)
    request_queue.claim_due_requests(queue, limit=1)
    legacy = {"forecast/job_id": str(request_id), "forecast/job_attempt": "1"}
    with DagsterInstance.ephemeral() as instance:
        run = create_run_for_test(instance, job_name="daily_forecast", status=DagsterRunStatus.STARTED, tags=legacy)
        heartbeat = heartbeat_resource(queue)
        context = start_heartbeat(heartbeat, instance, run)
        assert request_row(queue, request_id).status == "running"
        assert run_of(instance, request_id, 1).dagster_run.run_id == run.run_id
        heartbeat.teardown_after_execution(context)  # the process exits
        instance.report_run_failed(run, "boom")
        failed = instance.get_run_by_id(run.run_id)
        with build_run_status_sensor_context(
            sensor_name="forecast_request_failed",
            dagster_event=run_event(instance, run.run_id, DagsterEventType.RUN_FAILURE),
            dagster_instance=instance,
            dagster_run=failed,
            resources={"app_db": AppDatabase(url=engine_url(queue))},
        ).for_run_failure() as sensor_context:
            skipped = forecast_request_failed(sensor_context)
    assert f"forecast request {request_id}: queued" in skipped.skip_message
    row = request_row(queue, request_id)
    assert (row.status, row.dagster_run_id) == ("queued", run.run_id)


# ---- cancellation ---------------------------------------------------------------------------


def test_cancelling_a_queued_request_closes_it_at_once(queue):
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    assert request_queue.cancel_request(queue, request_id) == "cancelled"
    assert request_row(queue, request_id).status == "cancelled"
    assert request_queue.claim_due_requests(queue, limit=5) == []
    assert request_queue.cancel_request(queue, request_id) == "already cancelled"


def test_cancelling_a_claimed_request_cancels_its_queued_run_through_the_sensor(queue):
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    with DagsterInstance.ephemeral() as instance:
        evaluate_queue_sensor(instance, queue)
        run = queued_run(instance, request_tags(request_id))
        assert request_queue.cancel_request(queue, request_id) == "cancel requested"
        assert request_row(queue, request_id).status == "claimed"  # its run still exists
        evaluate_queue_sensor(instance, queue)  # the next tick cancels the Dagster run
        cancelled = instance.get_run_by_id(run.run_id)
        assert cancelled.status == DagsterRunStatus.CANCELED
        with build_run_status_sensor_context(
            sensor_name="forecast_request_cancelled",
            dagster_event=run_event(instance, run.run_id, DagsterEventType.RUN_CANCELED),
            dagster_instance=instance,
            dagster_run=cancelled,
            resources={"app_db": AppDatabase(url=engine_url(queue))},
        ) as context:
            forecast_request_cancelled(context)
    row = request_row(queue, request_id)
    assert row.status == "cancelled" and "cancel" in row.error


def test_a_cancel_requested_while_the_run_fails_cancels_instead_of_retrying(queue):
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF, max_attempts=3)
    request_queue.claim_due_requests(queue, limit=1)
    with DagsterInstance.ephemeral() as instance:
        run = started_run(instance, request_id)
        heartbeat = heartbeat_resource(queue)
        heartbeat.teardown_after_execution(start_heartbeat(heartbeat, instance, run))
        assert request_queue.cancel_request(queue, request_id) == "cancel requested"
        instance.report_run_failed(run, "interrupted")
        assert finish_request_for_run(instance, queue, instance.get_run_by_id(run.run_id)) == "cancelled"


# ---- deduplication and audit ----------------------------------------------------------------


def test_the_same_idempotency_key_gives_the_same_request(queue):
    first = request_queue.enqueue(queue, as_of_date=AS_OF, idempotency_key="order-sync-2025-11-10")
    again = request_queue.enqueue(queue, as_of_date=AS_OF, idempotency_key="order-sync-2025-11-10")
    other = request_queue.enqueue(queue, as_of_date=AS_OF, idempotency_key="order-sync-2025-11-11")
    assert first == again != other
    with queue.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM forecast_requests")).scalar_one() == 2
    with pytest.raises(sa.exc.IntegrityError):  # SQL writers are held to it too
        insert_raw(queue, parameters={"as_of_date": AS_OF.isoformat()}, idempotency_key="order-sync-2025-11-10")


def test_a_request_inserted_by_sql_gets_its_queued_audit_row(queue):
    request_id = insert_raw(queue, parameters={"as_of_date": AS_OF.isoformat()}, priority=3)
    (entry,) = request_queue.audit_entries(queue, request_id)
    assert entry.event == "queued" and entry.detail["priority"] == 3


# ---- the requests command -----------------------------------------------------------------------


def forecast_pipeline(tmp_path, *args, **env):
    return command([str(BIN / "forecast-pipeline"), "requests", *args], tmp_path, **env)


def test_the_cli_refuses_tomorrow_in_the_schedules_time_zone(queue, tmp_path):
    zone = "Etc/GMT-14"  # UTC+14: its today is often the UTC tomorrow
    import zoneinfo

    today = dt.datetime.now(zoneinfo.ZoneInfo(zone)).date()
    env = {"FORECAST_SCHEDULE_TIMEZONE": zone}
    tomorrow = forecast_pipeline(tmp_path, "enqueue", "--as-of", (today + dt.timedelta(days=1)).isoformat(), **env)
    assert tomorrow.returncode == 2 and "in the future" in tomorrow.stderr  # a usage error: exit 2
    ok = forecast_pipeline(tmp_path, "enqueue", "--as-of", today.isoformat(), **env)
    assert ok.returncode == 0, ok.stderr


def test_the_cli_rejects_zero_attempts_in_one_line(queue, tmp_path):
    done = forecast_pipeline(tmp_path, "enqueue", "--as-of", AS_OF.isoformat(), "--max-attempts", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == "forecast-pipeline requests enqueue: --max-attempts must be at least 1, got 0"


def test_the_cli_deduplicates_and_cancels(queue, tmp_path):
    first = forecast_pipeline(tmp_path, "enqueue", "--as-of", AS_OF.isoformat(), "--idempotency-key", "k1")
    assert first.returncode == 0, first.stderr
    request_id = int(first.stdout.split()[-1])
    again = forecast_pipeline(tmp_path, "enqueue", "--as-of", AS_OF.isoformat(), "--idempotency-key", "k1")
    assert again.returncode == 0 and f"request {request_id}" in again.stdout and "already" in again.stdout
    cancelled = forecast_pipeline(tmp_path, "cancel", str(request_id))
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert request_row(queue, request_id).status == "cancelled"
    unknown = forecast_pipeline(tmp_path, "cancel", "999999")
    assert unknown.returncode == 1 and "no forecast request 999999" in unknown.stderr
