"""Marks a queue request ``running`` when its Dagster run's process starts, and keeps its lease alive.

A run launched for a ``forecast_requests`` row (tagged ``forecast/request_id``, or ``forecast/job_id``
if launched before the rename) marks its request attempt started when its resources are set up,
then writes ``heartbeat_at`` every ``FORECAST_REQUEST_HEARTBEAT_SECONDS`` from a background thread,
and clears it when the resources are torn down (the process is done with the request). If the
process dies (killed, out of memory, node lost) the heartbeats stop and the recovery sensor
requeues the request. A run whose request attempt is no longer current (requeued or cancelled
meanwhile, e.g. a run that waited long in Dagster's queue) fails at once instead of executing the
request again. Works with every run launcher; Dagster's own worker health checks exist only for
Kubernetes. Runs without the tag do nothing here.
"""

import threading

from dagster import ConfigurableResource, Failure, InitResourceContext, ResourceDependency
from pydantic import PrivateAttr

from forecast_pipeline.forecast_queue import request_queue
from forecast_pipeline.resources import AppDatabase


class RunHeartbeat(ConfigurableResource):
    app_db: ResourceDependency[AppDatabase]
    interval_seconds: int = 15

    _stop: threading.Event | None = PrivateAttr(default=None)
    _thread: threading.Thread | None = PrivateAttr(default=None)
    _request: tuple[int, int] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run = context.run
        tags = run.tags if run is not None else {}
        tagged = request_queue.tagged_attempt(tags, default_attempt="1")
        if tagged is None:
            return
        request_id, attempt = tagged
        engine = self.app_db.engine()
        try:
            request_queue.mark_run_started(engine, request_id, attempt, run.run_id)
        except request_queue.StaleAttempt as exc:
            raise Failure(description=str(exc), metadata={"permanent": True}) from exc
        self._request = (request_id, attempt)
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(self.interval_seconds):
                try:
                    request_queue.heartbeat(engine, request_id, attempt)
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
                    if context.log:
                        context.log.warning(f"heartbeat for request {request_id} failed: {exc}")

        self._thread = threading.Thread(target=beat, name=f"request-{request_id}-heartbeat", daemon=True)
        self._thread.start()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            request_queue.mark_process_exited(self.app_db.engine(), *self._request)
        except Exception as exc:  # noqa: BLE001 - then the silent heartbeat tells the same, later
            if context.log:
                context.log.warning(f"could not record the end of request {self._request[0]}'s run: {exc}")
