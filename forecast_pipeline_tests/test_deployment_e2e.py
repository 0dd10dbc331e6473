"""End to end, as deployed: dagster-webserver and dagster-daemon on Postgres storage (deploy/dagster.yaml).

A partition backfill of two as-of dates goes through the webserver's GraphQL API (what the UI's
backfill button sends); the daily schedule is turned on and the daemon runs it; a queued job is
claimed by the daemon's sensor and closed by the run status sensor; the asset page is loaded in
headless Chromium and kept as a screenshot.
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

from forecast_pipeline import demo_data, job_queue
from forecast_pipeline.app_db import create_app_schema
from forecast_pipeline.jobs_schema import forecast_jobs
from forecast_pipeline.resources import make_engine
from forecast_pipeline_tests.conftest import BIN, POSTGRES_URL, REDIS_URL, _ensure_postgres_database

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration
STORAGE_DB = os.environ.get("TEST_DAGSTER_STORAGE_DB", "forecast_test_dagster_storage")


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
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
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
        for table in ("forecast_job_audit", "forecast_jobs", "forecast_predictions"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    create_app_schema(orders)

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
        "FORECAST_JOB_SENSOR_SECONDS": "3",
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
  startSchedule(scheduleSelector: $selector) { __typename ... on ScheduleStateResult { scheduleState { status } } }
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

    (run, *_) = _wait(scheduled_run_succeeded, 180, "a successful scheduled run", every=3)
    assert run.tags["dagster/partition"] == deployment["today"].isoformat()
    assert redis_client.hlen(f"forecast:asof:{deployment['today'].isoformat()}") > 20


def test_the_daemon_claims_a_queued_job_and_closes_it(deployment, redis_client):
    as_of = (deployment["today"] - dt.timedelta(days=3)).isoformat()
    engine = deployment["orders"]
    job_id = job_queue.enqueue(engine, as_of_date=as_of)

    def closed():
        with engine.connect() as conn:
            row = conn.execute(sa.select(forecast_jobs).where(forecast_jobs.c.id == job_id)).one()
        return row if row.status in ("succeeded", "failed", "cancelled") else None

    row = _wait(closed, 180, f"job {job_id} to be closed by the sensors", every=2)
    assert row.status == "succeeded", row.error
    assert row.rows_written > 200 and row.dagster_run_id
    events = [a.event for a in job_queue.audit_entries(engine, job_id)]
    assert events == ["queued", "claimed", "succeeded"]


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

    def idle_with_time_to_spare():
        """No run in progress, half a minute after the every-minute schedule's tick (its run done)
        and before the next: the page then shows settled check results, not a new run's planned ones."""
        with _instance(deployment) as instance:
            busy = instance.get_runs(
                RunsFilter(statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
            )
        return not busy and 25 <= dt.datetime.now().second < 35

    _wait(idle_with_time_to_spare, 180, "no run in progress", every=1)
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
