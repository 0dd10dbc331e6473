"""Requests whose Dagster run goes missing: a queue tick that dies after its claim committed but
before Dagster received its run requests, and a run deleted from the instance while its request is
running. Real PostgreSQL and real Dagster instances."""

import datetime as dt

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, RunsFilter

from forecast_pipeline.app_db.queue_tables import forecast_requests
from forecast_pipeline.defs.forecast_queue.sensors import failure_of, finish_request_for_run, recover_stale_requests
from forecast_pipeline.forecast_queue import request_queue
from forecast_pipeline.settings import load_settings
from forecast_pipeline_tests.conftest import AS_OF
from forecast_pipeline_tests.test_request_queue import (
    _execute,
    add_small_book,
    empty_queue,
    evaluate_queue_sensor,
    request_row,
)
from forecast_pipeline_tests.test_request_queue_load import heartbeat_resource, start_heartbeat, started_run


@pytest.fixture
def queue(pg):
    return empty_queue(pg)


def claimed_ago(engine, request_id: int, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            forecast_requests.update()
            .where(forecast_requests.c.id == request_id)
            .values(claimed_at=sa.func.now() - dt.timedelta(seconds=seconds))
        )


def test_a_tick_that_dies_after_its_claim_committed_requests_the_same_attempts_run_next_tick(queue, monkeypatch):
    """The claim commits, then the tick dies before Dagster gets its run requests (the code server
    restarted, the evaluation timed out, an error after the claim). The request must not wait for
    recovery to requeue it as a failed attempt (with max_attempts=1: fail it, never having run):
    a later tick requests the same attempt's run, under the same run_key."""
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF, max_attempts=1, priority=3)
    claim = request_queue.claim_due_requests

    def claim_then_die(*args, **kwargs):
        claim(*args, **kwargs)  # committed
        raise RuntimeError("the code server went away after the claim committed")

    monkeypatch.setattr(request_queue, "claim_due_requests", claim_then_die)
    with DagsterInstance.ephemeral() as instance:
        with pytest.raises(Exception, match="went away"):
            evaluate_queue_sensor(instance, queue)
        monkeypatch.undo()
        assert request_row(queue, request_id).status == "claimed"
        assert not instance.get_runs(RunsFilter(tags={request_queue.REQUEST_ID_TAG: str(request_id)}))
        claimed_ago(queue, request_id, 20)  # the next tick, one sensor interval later
        (request,) = evaluate_queue_sensor(instance, queue).run_requests
        assert request.run_key == f"forecast-request-{request_id}-attempt-1"  # Dagster creates it at most once
        assert request.tags[request_queue.ATTEMPT_TAG] == "1" and request.tags["dagster/priority"] == "3"
        assert request.partition_key == AS_OF.isoformat()
        # once the run exists, it is not requested again
        started_run(instance, request_id)
        assert not evaluate_queue_sensor(instance, queue).run_requests
    row = request_row(queue, request_id)
    assert (row.status, row.attempts) == ("claimed", 1)


def test_a_claim_whose_run_was_created_but_never_submitted_is_requested_again(queue):
    """The daemon can create a sensor's run and fail to submit it ("created successfully but failed
    to launch"): the run stays NOT_STARTED, and the request stayed claimed for ever, holding a slot
    and its concurrency key (found by a hunting helper). Requesting the same run_key again makes
    the daemon submit that run."""
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    from forecast_pipeline_tests.test_request_queue_load import request_tags

    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)
    with DagsterInstance.ephemeral() as instance:
        create_run_for_test(
            instance, job_name="daily_forecast", status=DagsterRunStatus.NOT_STARTED, tags=request_tags(request_id, 1)
        )
        claimed_ago(queue, request_id, 20)
        (request,) = evaluate_queue_sensor(instance, queue).run_requests
    assert request.run_key == f"forecast-request-{request_id}-attempt-1"


def test_a_cancelled_claim_whose_tick_died_is_not_requested_again(queue):
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF)
    request_queue.claim_due_requests(queue, limit=1)  # a tick that claimed it and died
    claimed_ago(queue, request_id, 20)
    assert request_queue.cancel_request(queue, request_id) == "cancel requested"
    with DagsterInstance.ephemeral() as instance:
        assert not evaluate_queue_sensor(instance, queue).run_requests
    assert request_row(queue, request_id).status == "cancelled"


@pytest.mark.parametrize("process", ["exited", "died"])
def test_a_running_request_whose_run_was_deleted_from_the_instance_is_recovered(queue, process):
    """A run deleted in the UI (or by run retention) while its request is running: once its
    process is gone the request must go back to the queue, not stay running for ever, holding a
    run slot and its concurrency key."""
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF, concurrency_key="tenant-a")
    request_queue.claim_due_requests(queue, limit=1)
    settings = load_settings({"FORECAST_REQUEST_HEARTBEAT_SECONDS": "1", "FORECAST_REQUEST_RETRY_BASE_SECONDS": "0"})
    with DagsterInstance.ephemeral() as instance:
        run = started_run(instance, request_id)
        heartbeat = heartbeat_resource(queue)
        context = start_heartbeat(heartbeat, instance, run)
        if process == "exited":
            heartbeat.teardown_after_execution(context)
        else:  # killed: its heartbeats simply stop
            heartbeat._stop.set()
            with queue.begin() as conn:
                conn.execute(forecast_requests.update().values(heartbeat_at=sa.func.now() - dt.timedelta(minutes=5)))
        assert request_row(queue, request_id).status == "running"
        instance.delete_run(run.run_id)
        counts = recover_stale_requests(instance, queue, settings=settings)
        assert sum(counts.values()) == 1, counts
    row = request_row(queue, request_id)
    assert row.status == "queued" and row.attempts == 1 and run.run_id in row.error
    (again,) = request_queue.claim_due_requests(queue, limit=1, capacity=1)  # its slot and key are free again
    assert (again.id, again.attempts) == (request_id, 2)


def test_a_refused_rerun_of_an_attempts_run_does_not_close_its_request(queue, pg_orders, redis_client):
    """A run re-executed from the UI carries its parent's tags, so the same request attempt. It is
    refused at start (the attempt belongs to the first run), and its failure must not close the
    request: the first run's outcome does. Here the first run succeeded and published, and the
    refused re-execution was seen first (its failure sensor ticked first, or the success sensor
    missed the first run and recovery found the newest run of the attempt)."""
    add_small_book(pg_orders)
    request_id = request_queue.enqueue(queue, as_of_date=AS_OF, product_ids=[2])
    with DagsterInstance.ephemeral() as instance:
        (request,) = evaluate_queue_sensor(instance, queue).run_requests
        first = _execute(request, queue, instance)
        assert first.success
        again = _execute(request, queue, instance)  # the re-execution: same tags
        assert not again.success
        assert "is no longer current" in failure_of(instance, again.run_id)[0]
        assert finish_request_for_run(instance, queue, instance.get_run_by_id(again.run_id)) is None
        assert request_row(queue, request_id).status == "running"
        # the success sensor missed the first run: recovery closes it, after its grace
        missed = load_settings({}).model_copy(update={"request_finished_grace_seconds": 0})
        counts = recover_stale_requests(instance, queue, settings=missed)
        assert counts["finished_unnoticed"] == 1, counts
    row = request_row(queue, request_id)
    assert (row.status, row.dagster_run_id, row.rows_written) == ("succeeded", first.run_id, 12)
