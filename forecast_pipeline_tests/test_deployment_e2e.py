"""End to end, as deployed: dagster-webserver and dagster-daemon on Postgres storage (deploy/dagster.yaml).

A partition backfill of two as-of dates goes through the webserver's GraphQL API (what the UI's
backfill button sends); the daily schedule is turned on and the daemon runs it; queued requests are
claimed by the daemon's sensor and closed by the run status sensors: a success, a failure, a
timeout that run monitoring terminates, a cancel, and a backlog larger than the run capacity with
a poison row in it; the asset page is loaded in headless Chromium and kept as a screenshot.

The daemon uses deploy/dagster.yaml as it is, except that run monitoring polls every 5 s instead
of every 60 s (so the timeout test takes seconds, not minutes); queue runs time out after
QUEUE_TIMEOUT_SECONDS. ``TEST_DAGSTER_STORAGE_DB`` names Dagster's storage database (dropped and
recreated).
"""

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from forecast_pipeline.app_db.queue_tables import forecast_requests
from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.connections import make_engine
from forecast_pipeline.forecast_queue import request_queue
from forecast_pipeline.source import demo_data
from forecast_pipeline_tests.conftest import (
    BIN,
    POSTGRES_URL,
    REDIS_URL,
    _ensure_postgres_database,
    worker_database_name,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration
STORAGE_DB = worker_database_name(os.environ.get("TEST_DAGSTER_STORAGE_DB", "forecast_test_dagster_storage"))
QUEUE_TIMEOUT_SECONDS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Webserver + daemon against a fresh Postgres storage database and demo order data."""
    home = tmp_path_factory.mktemp("dagster_home")
    deployed = (ROOT / "deploy" / "dagster.yaml").read_text()
    assert "  poll_interval_seconds: 60\n" in deployed
    faster = deployed.replace("  poll_interval_seconds: 60\n", "  poll_interval_seconds: 5\n")
    (home / "dagster.yaml").write_text(faster)
    storage_url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{STORAGE_DB}"
    admin = make_engine(POSTGRES_URL.rsplit("/", 1)[0] + "/postgres")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{STORAGE_DB}" WITH (FORCE)'))
    admin.dispose()
    _ensure_postgres_database(storage_url)

    orders = make_engine(POSTGRES_URL)
    today = dt.datetime.now(dt.UTC).date()
    demo_data.load(orders, demo_data.generate(products=40, customers=60, end=today, seed=3))
    with orders.begin() as conn:
        for table in ("forecast_request_audit", "forecast_requests", "forecast_predictions"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))  # and the compatibility views
    upgrade_app_schema(orders)

    url = sa.engine.make_url(storage_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FORECAST_", "REDIS_", "DATABASE_URL"))},
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_DB": STORAGE_DB,
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DATABASE_URL": POSTGRES_URL,
        "REDIS_URL": REDIS_URL,
        "FORECAST_WORKERS": "1",
        "FORECAST_SCHEDULE_CRON": "* * * * *",
        "FORECAST_REQUEST_SENSOR_SECONDS": "3",
        "FORECAST_REQUEST_TIMEOUT_SECONDS": str(QUEUE_TIMEOUT_SECONDS),
        "FORECAST_REQUEST_HEARTBEAT_SECONDS": "2",
        "FORECAST_REQUEST_RETRY_BASE_SECONDS": "2",
    }
    port = _free_port()
    logs = home / "logs"
    logs.mkdir()
    commands = {
        "webserver": [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    }
    processes = []
    for name, command in commands.items():
        with open(logs / f"{name}.log", "w") as log:  # the child keeps its own copy of the handle
            processes.append(
                subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    base = f"http://127.0.0.1:{port}"

    def server_info():
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=5) as response:
                return json.load(response)
        except OSError:
            return None

    try:
        _wait(server_info, 120, "the webserver's /server_info", every=2)
        yield {"base": base, "env": env, "home": home, "orders": orders, "today": today, "logs": logs}
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        orders.dispose()


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{base}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        doc = json.load(response)
    assert "errors" not in doc, doc["errors"]
    return doc["data"]


def _instance(deployment):
    from dagster import DagsterInstance

    os.environ.update({k: v for k, v in deployment["env"].items() if k.startswith("DAGSTER_")})
    return DagsterInstance.get()


BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
BACKFILL_STATUS = """
query Status($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"""


def test_a_backfill_launched_through_graphql_caches_both_dates(deployment, redis_client):
    dates = [(deployment["today"] - dt.timedelta(days=d)).isoformat() for d in (8, 7)]  # adjacent: one range
    assets = [{"path": [name]} for name in ("eligible_products", "product_forecasts", "forecast_predictions")]
    launched = graphql(deployment["base"], BACKFILL, {"params": {"partitionNames": dates, "assetSelection": assets}})
    result = launched["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    backfill_id = result["backfillId"]

    def finished():
        answer = graphql(deployment["base"], BACKFILL_STATUS, {"id": backfill_id})
        status = answer["partitionBackfillOrError"]["status"]
        done = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")
        return status if status in done else None

    assert _wait(finished, 240, f"backfill {backfill_id}", every=3) in ("COMPLETED", "COMPLETED_SUCCESS")
    for as_of in dates:
        assert redis_client.hlen(f"forecast:asof:{as_of}") > 20
        assert json.loads(redis_client.get(f"forecast:metadata:{as_of}"))["failed"] == 0
    assert json.loads(redis_client.get("forecast:metadata:last_run"))["as_of_date"] == dates[-1]

    from dagster import DagsterRunStatus, RunsFilter

    with _instance(deployment) as instance:
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert runs and all(run.status == DagsterRunStatus.SUCCESS for run in runs)
    assert len(runs) == 1  # single-run backfill policy: both dates in one run


START_SCHEDULE = """
mutation Start($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) { __typename ... on ScheduleStateResult { scheduleState { id status } } }
}"""
STOP_SCHEDULE = """
mutation Stop($id: String!) {
  stopRunningSchedule(id: $id) { __typename ... on ScheduleStateResult { scheduleState { status } } }
}"""


def test_the_daemon_runs_the_daily_schedule_once_turned_on(deployment, redis_client):
    selector = {
        "repositoryLocationName": "forecast_pipeline",
        "repositoryName": "__repository__",
        "scheduleName": "daily_forecast_schedule",
    }
    started = graphql(deployment["base"], START_SCHEDULE, {"selector": selector})["startSchedule"]
    assert started["scheduleState"]["status"] == "RUNNING", started

    from dagster import DagsterRunStatus, RunsFilter

    def scheduled_run_succeeded():
        with _instance(deployment) as instance:
            runs = instance.get_runs(RunsFilter(tags={"dagster/schedule_name": "daily_forecast_schedule"}))
        return [r for r in runs if r.status == DagsterRunStatus.SUCCESS]

    try:
        (run, *_) = _wait(scheduled_run_succeeded, 180, "a successful scheduled run", every=3)
    finally:  # the test's cron is every minute: left on, it would launch a run a minute for the rest of the module
        stopped = graphql(deployment["base"], STOP_SCHEDULE, {"id": started["scheduleState"]["id"]})
    assert stopped["stopRunningSchedule"]["scheduleState"]["status"] == "STOPPED", stopped
    assert run.tags["dagster/partition"] == deployment["today"].isoformat()
    assert redis_client.hlen(f"forecast:asof:{deployment['today'].isoformat()}") > 20


def test_the_daemon_claims_a_queued_request_and_closes_it(deployment, redis_client):
    as_of = (deployment["today"] - dt.timedelta(days=3)).isoformat()
    engine = deployment["orders"]
    request_id = request_queue.enqueue(engine, as_of_date=as_of)

    def closed():
        with engine.connect() as conn:
            row = conn.execute(sa.select(forecast_requests).where(forecast_requests.c.id == request_id)).one()
        return row if row.status in ("succeeded", "failed", "cancelled") else None

    row = _wait(closed, 180, f"request {request_id} to be closed by the sensors", every=2)
    assert row.status == "succeeded", row.error
    assert row.rows_written > 200 and row.dagster_run_id
    events = [a.event for a in request_queue.audit_entries(engine, request_id)]
    assert events == ["queued", "claimed", "started", "succeeded"]


def _request(engine, request_id):
    with engine.connect() as conn:
        return conn.execute(sa.select(forecast_requests).where(forecast_requests.c.id == request_id)).one()


def _closed(engine, *request_ids):
    def check():
        rows = [_request(engine, j) for j in request_ids]
        return rows if all(r.status in ("succeeded", "failed", "cancelled") for r in rows) else None

    return check


def _queue_runs(deployment, request_id):
    from dagster import RunsFilter

    with _instance(deployment) as instance:
        return instance.get_run_records(RunsFilter(tags={request_queue.REQUEST_ID_TAG: str(request_id)}))


def test_the_daemon_fails_a_request_with_its_runs_real_error(deployment):
    engine = deployment["orders"]
    as_of = (deployment["today"] - dt.timedelta(days=4)).isoformat()
    request_id = request_queue.enqueue(engine, as_of_date=as_of, product_ids=[999_999], max_attempts=3)
    (row,) = _wait(_closed(engine, request_id), 180, f"request {request_id} to be closed", every=2)
    assert row.status == "failed" and "999999" in row.error and "not eligible" in row.error
    assert row.attempts == 1  # a permanent failure is not retried
    (record,) = _queue_runs(deployment, request_id)
    assert record.dagster_run.status.value == "FAILURE"


def test_the_daemon_terminates_a_run_past_its_timeout_and_then_closes_the_request(deployment):
    engine = deployment["orders"]
    last = deployment["today"] - dt.timedelta(days=20)
    first = last - dt.timedelta(days=400)  # far longer than the timeout
    request_id = request_queue.enqueue(engine, date_range=(first, last), max_attempts=1)
    (row,) = _wait(
        _closed(engine, request_id), QUEUE_TIMEOUT_SECONDS + 180, f"request {request_id} to time out", every=2
    )
    assert row.status == "failed", row.error
    assert f"Exceeded maximum runtime of {QUEUE_TIMEOUT_SECONDS} seconds" in row.error
    assert row.heartbeat_at is None  # closed only once the run's process had stopped
    (record,) = _queue_runs(deployment, request_id)
    # run monitoring fails it as it terminates it; the run's process may record CANCELED last
    assert record.dagster_run.status.value in ("FAILURE", "CANCELED")
    assert record.dagster_run.tags["dagster/max_runtime"] == str(QUEUE_TIMEOUT_SECONDS)
    with engine.connect() as conn:  # the terminated run never got to write its predictions
        written = conn.execute(
            sa.text("SELECT count(*) FROM forecast_predictions WHERE as_of_date BETWEEN :a AND :b"),
            {"a": first, "b": last},
        ).scalar_one()
    assert written == 0


def _run_worker_pid(deployment, run_id: str) -> int | None:
    """The pid the code server logged for the run's process ("Started process for run (pid: N).")."""
    with _instance(deployment) as instance:
        for entry in instance.all_logs(run_id):
            found = re.search(r"Started process for run \(pid: (\d+)\)", entry.message or "")
            if found:
                return int(found.group(1))
    return None


def _exited(pid: int) -> bool:
    """Gone, or a zombie its parent (the code server) has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_request_whose_run_worker_and_code_server_died_between_steps_is_closed_at_its_max_runtime(deployment):
    """The multiprocess executor's gap (README, forecast request queue): its heartbeat lives in the
    step processes, so a run that dies while no step runs leaves a running request without a
    heartbeat, which stale-request recovery cannot tell from a run between steps. A run worker
    killed alone is marked failed by its code server (Dagster's orphaned-run check); killed with
    its code server (a lost node, an OOM-killed container), run monitoring's max runtime still ends
    the run, and the request with it. The state is made with the in-process executor: both
    processes killed, then the heartbeat cleared as a step that finished leaves it."""
    engine = deployment["orders"]
    last = deployment["today"] - dt.timedelta(days=900)
    request_id = request_queue.enqueue(engine, date_range=(last - dt.timedelta(days=400), last), max_attempts=1)

    def beating():
        row = _request(engine, request_id)
        return row if row.status == "running" and row.heartbeat_at is not None else None

    row = _wait(beating, 180, f"request {request_id} to run", every=0.5)
    worker = _wait(lambda: _run_worker_pid(deployment, row.dagster_run_id), 30, "the run worker's pid", every=0.5)
    code_server = _parent(worker)
    assert "grpc" in Path(f"/proc/{code_server}/cmdline").read_text()
    os.kill(code_server, signal.SIGKILL)  # first, or it would see its run's process die and fail the run
    os.kill(worker, signal.SIGKILL)
    _wait(lambda: _exited(worker) and _exited(code_server), 10, "both processes to exit")
    with engine.begin() as conn:  # as request_queue.mark_process_exited leaves it between two steps
        conn.execute(forecast_requests.update().where(forecast_requests.c.id == request_id).values(heartbeat_at=None))

    (row,) = _wait(
        _closed(engine, request_id), QUEUE_TIMEOUT_SECONDS + 180, f"request {request_id} to be closed", every=2
    )
    assert row.status == "failed" and row.attempts == 1, row
    (record,) = _queue_runs(deployment, request_id)
    assert record.dagster_run.status.value == "FAILURE"
    assert "forcibly marked as failed" in row.error or "maximum runtime" in row.error, row.error


def test_requests_cancel_terminates_a_running_run_through_the_daemon(deployment):
    engine = deployment["orders"]
    last = deployment["today"] - dt.timedelta(days=500)
    request_id = request_queue.enqueue(engine, date_range=(last - dt.timedelta(days=400), last))

    def running():
        return _request(engine, request_id).status == "running"

    _wait(running, 180, f"request {request_id} to start", every=1)
    done = subprocess.run(
        [str(BIN / "forecast-pipeline"), "requests", "cancel", str(request_id)],
        env=deployment["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "cancel requested" in done.stdout, done.stdout + done.stderr
    (row,) = _wait(_closed(engine, request_id), 120, f"request {request_id} to be cancelled", every=2)
    assert row.status == "cancelled" and row.attempts == 1
    (record,) = _queue_runs(deployment, request_id)
    assert record.dagster_run.status.value in ("CANCELED", "FAILURE")  # terminated, not finished
    assert "cancel_requested" in [a.event for a in request_queue.audit_entries(engine, request_id)]


def test_a_backlog_beyond_the_run_capacity_with_a_poison_row_runs_each_request_once(deployment):
    engine = deployment["orders"]
    with engine.begin() as conn:
        poison = conn.execute(
            forecast_requests.insert()
            .values(parameters={"as_of_date": deployment["today"].isoformat(), "product_ids": [True]}, priority=9)
            .returning(forecast_requests.c.id)
        ).scalar_one()
    backlog = [
        request_queue.enqueue(engine, as_of_date=deployment["today"] - dt.timedelta(days=30 + n), priority=n % 3)
        for n in range(6)
    ]
    most_running = 0

    def all_closed():
        nonlocal most_running
        with engine.connect() as conn:
            # executing: its run's process started and has not reported its exit (a request whose run
            # ended stays 'running' until the status sensor closes it, holding no run slot)
            running = conn.execute(
                sa.text("SELECT count(*) FROM forecast_requests WHERE status = 'running' AND heartbeat_at IS NOT NULL")
            ).scalar_one()
        most_running = max(most_running, running)
        return _closed(engine, poison, *backlog)()

    rows = _wait(all_closed, 400, "the backlog to drain", every=1)
    assert most_running <= 2  # deploy/dagster.yaml lets two queue runs execute at once
    runs = [record for request_id in backlog for record in _queue_runs(deployment, request_id) if record.start_time]
    starts_and_ends = sorted([(r.start_time, 1) for r in runs] + [(r.end_time, -1) for r in runs])
    executing = [sum(step for _, step in starts_and_ends[: i + 1]) for i in range(len(starts_and_ends))]
    assert max(executing) <= 2, starts_and_ends  # from Dagster's own run records
    bad, *good = rows
    assert bad.status == "failed" and "product_ids must be a non-empty list of integers" in bad.error
    assert not _queue_runs(deployment, poison)  # no run was ever requested for it
    assert [r.status for r in good] == ["succeeded"] * len(good), [r.error for r in good]
    for request_id in backlog:
        (record,) = _queue_runs(deployment, request_id)  # exactly one run per request
        assert record.dagster_run.status.value == "SUCCESS"
        assert record.dagster_run.tags["dagster/priority"] == str(_request(engine, request_id).priority)


def test_the_daemon_is_live(deployment):
    done = subprocess.run(
        [str(BIN / "dagster-daemon"), "liveness-check"],
        env=deployment["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (scripts/services.sh installs it)")
def test_the_asset_page_renders_the_forecasts_in_headless_chromium(deployment):
    """The table of top forecasts and the charts render on the asset page itself, not behind a link."""
    shot = deployment["home"] / "asset-page.png"
    url = f"{deployment['base']}/assets/product_forecasts"

    def chromium(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={deployment['home'] / 'chromium'}",
                "--window-size=1440,2000",
                "--virtual-time-budget=15000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    from dagster import DagsterRunStatus, RunsFilter

    def idle():
        """No run in progress (the schedule test stopped its every-minute schedule): the page then
        shows settled check results, not a new run's planned ones."""
        with _instance(deployment) as instance:
            busy = instance.get_runs(
                RunsFilter(statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
            )
        return not busy

    _wait(idle, 180, "no run in progress", every=1)
    dom = chromium("--dump-dom").stdout
    assert "top_forecasts" in dom and "week_12" in dom, dom[-2000:]
    charts = re.findall(r'<img[^>]+src="data:image/svg\+xml;utf8,[^"]+"', dom)
    assert len(charts) == 4, dom[-2000:]  # forecast_chart_1..4, each drawn inline
    assert "[Show Markdown]" not in dom
    done = chromium(f"--screenshot={shot}")
    assert shot.exists(), done.stderr[-2000:]
    assert shot.stat().st_size > 30_000  # a rendered page, not a blank one
    keep = os.environ.get("FORECAST_SCREENSHOT_PATH")
    if keep:
        shutil.copy(shot, keep)
