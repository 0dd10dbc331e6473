"""Under ``dagster asset materialize`` (and so in the UI's run log) a failure's first line says
what is wrong and what to do: a dagster Failure with a one-line description, not a driver's
exception chain printed twice, and never the wrong hint."""

import datetime as dt
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from forecast_pipeline_tests.conftest import BIN, POSTGRES_URL, REDIS_URL, command, private_redis

pytestmark = pytest.mark.integration

PARTITION = "2025-11-10"
MATERIALIZE = [str(BIN / "dagster"), "asset", "materialize", "-m", "forecast_pipeline", "--select", "*"]
LAUNCH = [str(BIN / "dg"), "launch", "--assets", "*"]
README_WARNING_FILTER = re.search(
    r"PYTHONWARNINGS='(ignore:Function `asset_materialize_command` is superseded)'",
    (Path(__file__).parents[1] / "README.md").read_text(),
).group(1)


def first_error(output: str) -> str:
    """The message under the run's first ERROR event (Dagster prints it after a blank line)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if " - ERROR - " in line)
    return next(line for line in lines[start + 1 :] if line.strip())


@pytest.fixture
def demo_orders(tmp_path):
    """A small demo history in SQLite, as the quickstart makes it."""
    url = f"sqlite:///{tmp_path / 'orders.sqlite'}"
    done = command([str(BIN / "forecast-pipeline"), "init-db"], tmp_path, DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    done = command(
        [str(BIN / "forecast-pipeline"), "demo-data", "--products", "40", "--as-of", PARTITION],
        tmp_path,
        DATABASE_URL=url,
    )
    assert done.returncode == 0, done.stderr
    return url


def test_a_source_database_that_does_not_exist_says_so_without_the_init_db_hint(tmp_path):
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/ft_no_such_database"
    done = command([*MATERIALIZE, "--partition", PARTITION], tmp_path, DATABASE_URL=url)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    line = first_error(output)
    assert line.startswith("dagster._core.definitions.events.Failure: Reading order history failed: "), line
    assert "ft_no_such_database does not exist: create it, or point DATABASE_URL at" in line, line
    assert "init-db" not in output
    assert "psycopg2.OperationalError" not in output  # the driver's chain is gone, its message is in the line


def test_an_application_database_that_does_not_exist_names_app_database_url(tmp_path, demo_orders):
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/ft_no_such_app_database"
    done = command([*MATERIALIZE, "--partition", PARTITION], tmp_path, DATABASE_URL=demo_orders, APP_DATABASE_URL=url)
    assert done.returncode != 0
    line = first_error(done.stdout + done.stderr)
    assert "forecast_predictions failed: " in line and "ft_no_such_app_database does not exist" in line, line
    assert "point APP_DATABASE_URL at" in line, line


@pytest.mark.parametrize("launch", [MATERIALIZE, LAUNCH], ids=["dagster-asset-materialize", "dg-launch"])
def test_redis_down_when_the_run_starts_fails_the_first_step_in_one_line(tmp_path, demo_orders, launch):
    """Not Dagster's RESOURCE_INIT_FAILURE with the line twice in ~140 lines: the first step
    (eligible_products) pings Redis before any work and fails with the URL, password hidden."""
    with private_redis() as (url, process):
        process.kill()
        process.wait()
    secret_url = url.replace("redis://", "redis://:s3cret@")
    done = command([*launch, "--partition", PARTITION], tmp_path, DATABASE_URL=demo_orders, REDIS_URL=secret_url)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "RESOURCE_INIT_FAILURE" not in output, output
    failure = next(line for line in output.splitlines() if " - ERROR - " in line)
    assert " - eligible_products - " in failure and "STEP_FAILURE" in failure, failure
    line = first_error(output)
    assert line.startswith("dagster._core.definitions.events.Failure: Redis at redis://:***@127.0.0.1:"), line
    assert " is unreachable (" in line and "start it, or point REDIS_URL" in line, line
    assert "s3cret" not in output
    assert "redis.exceptions.ConnectionError" not in output and "ConnectionRefusedError" not in output
    assert len(output.splitlines()) < 100, len(output.splitlines())  # was 136 (dg launch) and 157


def quickstart_launch() -> list[str]:
    """The quickstart's own `dg launch` command line, as scripts/quickstart.sh runs it."""
    script = (Path(__file__).parents[1] / "scripts" / "quickstart.sh").read_text()
    line = next(line for line in script.splitlines() if line.startswith(".venv/bin/dg launch "))
    args = shlex.split(line.replace('"$AS_OF"', PARTITION))
    return [str(BIN / "dg"), *args[1:]]


def test_the_quickstart_run_prints_its_progress_without_dagsters_debug_events(tmp_path, demo_orders):
    """A first run shows what the pipeline did (a dozen INFO lines), not ~45 DEBUG events about
    resources, inputs and outputs; a failure is still printed (ERROR, see the tests above)."""
    done = command(quickstart_launch(), tmp_path, DATABASE_URL=demo_orders)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert " - DEBUG - " not in output, output[:3000]
    assert "eligible products for as-of 2025-11-10" in output, output[:3000]
    assert re.search(r"Published \d+ forecasts for 2025-11-10", output), output[-3000:]
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:  # the UI's run log
        (run,) = instance.get_runs()
        events = [e.dagster_event.event_type_value for e in instance.all_logs(run.run_id) if e.dagster_event]
    assert events.count("STEP_START") == 6 and "RESOURCE_INIT_SUCCESS" in events, events


def test_redis_going_away_during_the_run_is_one_line_saying_to_rerun(tmp_path, demo_orders):
    home = tmp_path / "dagster_home"  # made by the fixture's commands
    with private_redis() as (url, redis_process):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FORECAST_", "REDIS_", "DATABASE_URL"))},
            "DAGSTER_HOME": str(home),
            "DATABASE_URL": demo_orders,
            "REDIS_URL": url,
            "FORECAST_WORKERS": "1",
        }
        run = subprocess.Popen(
            [*MATERIALIZE, "--partition", PARTITION],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen = []
        for line in run.stdout:  # the first step has read the products: now Redis goes away
            seen.append(line)
            if "eligible products for as-of" in line:
                redis_process.kill()
                redis_process.wait()
                break
        output = "".join(seen) + run.communicate(timeout=300)[0]
    assert run.returncode != 0, output[-3000:]
    line = first_error(output)
    assert f"Redis at {url} stopped answering while " in line and "rerun the partition" in line, line
    assert "redis.exceptions.ConnectionError" not in output, output[-3000:]


def test_check_states_the_range_of_partitions(tmp_path):
    done = command([str(BIN / "forecast-pipeline"), "check"], tmp_path, REDIS_URL=REDIS_URL)
    lines = [line for line in done.stdout.splitlines() if line.startswith("partitions: ")]
    assert lines and "2019-01-01" in lines[0] and "FORECAST_HISTORY_START" in lines[0], done.stdout


@pytest.mark.parametrize(
    ("launch", "key"),
    [(MATERIALIZE, "2031-01-01"), (LAUNCH, "2025/11/10")],
    ids=["dagster-asset-materialize-future", "dg-launch-wrong-format"],
)
def test_a_partition_outside_the_range_states_the_valid_range_and_format(tmp_path, launch, key):
    # the older CLI with the README's filter for Dagster's superseded-command warning
    done = command([*launch, "--partition", key], tmp_path, PYTHONWARNINGS=README_WARNING_FILTER)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "SupersessionWarning" not in output and "Invalid -W option" not in output, output[:500]
    today = dt.date.today()  # the last partition is today (end_offset=1), in the schedule's zone
    last = {(today + dt.timedelta(days=d)).isoformat() for d in (-1, 0, 1)}
    line = next((li for li in output.splitlines() if "is not an as-of date of forecast_pipeline" in li), None)
    assert line is not None, output[-3000:]
    assert f"`{key}`" in line and "2019-01-01" in line and "YYYY-MM-DD" in line, line
    assert any(f"to {d}" in line for d in last), line
