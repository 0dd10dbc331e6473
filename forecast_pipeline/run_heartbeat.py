"""Keeps a queue job's lease alive while its Dagster run's process lives.

A run launched for a ``forecast_jobs`` row (tagged ``forecast/job_id``) writes ``heartbeat_at``
every ``FORECAST_JOB_HEARTBEAT_SECONDS`` from a background thread. If the process dies (killed,
out of memory, node lost) the heartbeats stop, and the stale-job sensor requeues the job. This
works with every run launcher; Dagster's own worker health checks exist only for Kubernetes.
Runs without the tag (schedules, the UI, the CLI) do nothing here.
"""

import threading

from dagster import ConfigurableResource, InitResourceContext, ResourceDependency
from pydantic import PrivateAttr

from forecast_pipeline import job_queue
from forecast_pipeline.app_db import AppDatabase


class RunHeartbeat(ConfigurableResource):
    app_db: ResourceDependency[AppDatabase]
    interval_seconds: int = 15

    _stop: threading.Event | None = PrivateAttr(default=None)
    _thread: threading.Thread | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run = context.run
        tags = run.tags if run is not None else {}
        if job_queue.JOB_ID_TAG not in tags:
            return
        job_id, attempt = int(tags[job_queue.JOB_ID_TAG]), int(tags.get(job_queue.ATTEMPT_TAG, "1"))
        engine = self.app_db.engine()
        job_queue.record_run(engine, job_id, run.run_id)
        job_queue.heartbeat(engine, job_id, attempt)
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(self.interval_seconds):
                try:
                    job_queue.heartbeat(engine, job_id, attempt)
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
                    if context.log:
                        context.log.warning(f"heartbeat for job {job_id} failed: {exc}")

        self._thread = threading.Thread(target=beat, name=f"job-{job_id}-heartbeat", daemon=True)
        self._thread.start()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
