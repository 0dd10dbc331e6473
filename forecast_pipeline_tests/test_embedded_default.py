"""On the embedded SQLite default, nothing accepts work it can never do: the sensors that need
PostgreSQL (request queue, report schedules) are off by default with the reason in their description,
and the commands that feed them refuse in one line naming APP_DATABASE_URL. On PostgreSQL they
stay on and the commands work."""

import json
import sqlite3
import sys

import pytest

from forecast_pipeline_tests.conftest import BIN, POSTGRES_URL, command

pytestmark = pytest.mark.integration

CLI = str(BIN / "forecast-pipeline")
POSTGRES_ONLY_SENSORS = {
    "forecast_request_queue",
    "forecast_request_succeeded",
    "forecast_request_failed",
    "forecast_request_cancelled",
    "forecast_request_recovery",
    "report_schedule_tick",
    "report_run_failed",
    "report_run_cancelled",
}
ALERT_SENSORS = {"alert_evaluation_sensor", "alert_notification_sensor", "alert_retention_sensor"}

SENSORS_AS_LOADED = """
import json
from forecast_pipeline.definitions import defs
repo = defs().get_repository_def()
print(json.dumps({s.name: [s.default_status.value, s.description] for s in repo.sensor_defs}))
"""


def sensors_as_loaded(tmp_path, **env) -> dict:
    """Each sensor's default status and description as the code location loads them (a fresh
    process: both are decided when the definitions are imported)."""
    done = command([sys.executable, "-c", SENSORS_AS_LOADED], tmp_path, **env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_on_sqlite_the_postgres_only_sensors_are_off_and_say_why(tmp_path):
    sensors = sensors_as_loaded(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'orders.sqlite'}")
    for name in POSTGRES_ONLY_SENSORS:
        status, description = sensors[name]
        assert status == "STOPPED", name
        assert description.startswith("Off by default: "), (name, description)
        assert "needs PostgreSQL" in description and "APP_DATABASE_URL" in description, description
    for name in ALERT_SENSORS:  # the alert tables work on SQLite: those stay on
        assert sensors[name][0] == "RUNNING", name


def test_on_postgres_they_are_on_with_their_plain_description(tmp_path):
    sensors = sensors_as_loaded(tmp_path, DATABASE_URL=POSTGRES_URL)
    for name in POSTGRES_ONLY_SENSORS:
        status, description = sensors[name]
        assert status == "RUNNING", name
        assert "needs PostgreSQL" not in description


def test_an_app_database_url_on_postgres_turns_them_on_with_sqlite_orders(tmp_path):
    sensors = sensors_as_loaded(
        tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'orders.sqlite'}", APP_DATABASE_URL=POSTGRES_URL
    )
    assert {sensors[name][0] for name in POSTGRES_ONLY_SENSORS} == {"RUNNING"}


@pytest.mark.parametrize(
    "args",
    [
        ["requests", "enqueue", "--as-of", "2025-11-10"],
        ["requests", "list"],
        ["requests", "cancel", "1"],
        ["reports", "add-plan", "--name", "pro", "--monthly-limit", "30"],
        ["reports", "list"],
        ["reports", "tick", "--dry-run"],
    ],
)
def test_on_sqlite_queue_and_report_commands_refuse_in_one_line(tmp_path, args):
    database = tmp_path / "orders.sqlite"
    done = command([CLI, *args], tmp_path, DATABASE_URL=f"sqlite:///{database}")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"forecast-pipeline {args[0]} {args[1]}: "), lines[0]
    assert "needs PostgreSQL" in lines[0] and "set APP_DATABASE_URL to a postgresql:// URL" in lines[0]
    assert f"sqlite:///{database}" in lines[0]
    if database.exists():  # nothing was written: no queue table, no plan
        tables = {row[0] for row in sqlite3.connect(database).execute("SELECT name FROM sqlite_master")}
        assert "forecast_requests" not in tables and "plans" not in tables


def test_on_postgres_enqueue_still_queues(tmp_path, pg):
    done = command([CLI, "requests", "enqueue", "--as-of", "2025-11-10"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("queued forecast request ")
    listed = command([CLI, "requests", "list"], tmp_path)
    assert listed.returncode == 0 and "2025-11-10" in listed.stdout


def test_reports_init_on_sqlite_creates_the_tables_and_warns(tmp_path):
    done = command([CLI, "reports", "init"], tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'orders.sqlite'}")
    assert done.returncode == 0, done.stderr
    assert "warning: report scheduling needs PostgreSQL" in done.stderr


def test_no_dagster_yaml_at_the_repository_root_and_the_quickstart_copies_the_local_one():
    """``dagster dev`` run from the repository root (as the README says) warns about a
    dagster.yaml or dagster.yml in the current folder whenever DAGSTER_HOME is elsewhere."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert not (root / "dagster.yaml").exists() and not (root / "dagster.yml").exists()
    assert "cp deploy/local/dagster.yaml " in (root / "scripts" / "quickstart.sh").read_text()
    assert "telemetry:\n  enabled: false" in (root / "deploy" / "local" / "dagster.yaml").read_text()
