"""Every mistake a user makes with ``forecast-pipeline`` gets one line saying what to do, never a
traceback: usage errors exit 2, errors of the environment (database, Redis, drivers) exit 1."""

import argparse
import datetime as dt
import json
import subprocess
import zoneinfo

import pytest
import redis

from forecast_pipeline.cache import forecast_cache
from forecast_pipeline_tests.conftest import BIN, POSTGRES_URL, Orders, command

pytestmark = pytest.mark.integration

CLI = str(BIN / "forecast-pipeline")
CACHED_AS_OF = "2025-11-10"


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def assert_one_line_error(done: subprocess.CompletedProcess, exit_code: int, *phrases: str) -> None:
    assert done.returncode == exit_code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    line = first_line(done.stderr)
    for phrase in phrases:
        assert phrase in line, (phrase, done.stderr)


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["demo-data", "--as-of", "2026/11/30"], "--as-of", "2026/11/30"),
        (["backtest", "--as-of", "2026-13-01"], "--as-of", "2026-13-01"),
        (["show", "--as-of", "yesterday"], "--as-of", "yesterday"),
    ],
)
def test_a_malformed_date_is_a_usage_error_naming_the_option_and_the_format(tmp_path, args, option, value):
    done = command([CLI, *args], tmp_path)
    assert_one_line_error(done, 2, option, repr(value), "YYYY-MM-DD")


def test_a_database_that_does_not_exist_is_named_without_the_init_db_hint(tmp_path):
    url = "postgresql://postgres:secret@127.0.0.1:5432/no_such_db"
    shown = command([CLI, "show"], tmp_path, DATABASE_URL=url, REDIS_URL="redis://127.0.0.1:6390/0")
    demo = command([CLI, "demo-data", "--products", "5"], tmp_path, DATABASE_URL=url)
    assert_one_line_error(demo, 1, "postgresql+psycopg2://postgres:***@127.0.0.1:5432/no_such_db", "does not exist")
    assert "secret" not in demo.stderr and "init-db" not in demo.stderr
    checked = command([CLI, "check"], tmp_path, DATABASE_URL=url)
    assert checked.returncode == 1
    assert "init-db" not in checked.stdout + checked.stderr
    assert any("no_such_db" in line and "does not exist" in line for line in checked.stdout.splitlines())
    assert "Traceback" not in shown.stderr + checked.stderr


def test_a_missing_database_driver_is_named_as_a_missing_package(tmp_path):
    done = command([CLI, "check"], tmp_path, DATABASE_URL="mysql://u:pw@127.0.0.1/db")
    assert_one_line_error(done, 2, "DATABASE_URL", "driver", "not installed")
    assert "mysqlclient" in done.stderr and "pw" not in done.stderr


@pytest.fixture
def cached_run(redis_client):
    """One run's metadata and one product's forecast, as a run leaves them in Redis."""
    doc = {
        "product_id": 1,
        "as_of_date": CACHED_AS_OF,
        "summary": {"total_predicted_quantity": 1.0},
        "predictions": [{"week": i} for i in range(20_000)],  # far more than a pipe's buffer
    }
    forecast_cache.write_forecasts(redis_client, "forecast", CACHED_AS_OF, [doc], ttl=600, history_ttl=600)
    metadata = {"as_of_date": CACHED_AS_OF, "successful": 1, "failed": 0}
    forecast_cache.write_run_metadata(redis_client, "forecast", metadata, ttl=600, history_ttl=600)
    return doc


def test_show_into_a_closed_pipe_exits_quietly(cached_run, tmp_path):
    """``show --json | head -1``: the reader goes away before the output is written."""
    done = subprocess.run(
        f"'{CLI}' show --json | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        env=_command_env(tmp_path),
        timeout=120,
    )
    assert done.stdout == "{"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr and "Exception" not in done.stderr


def _command_env(tmp_path):
    """The environment ``command`` gives a console script, for a shell pipeline."""
    import os

    from forecast_pipeline_tests.conftest import REDIS_URL

    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("FORECAST_", "REDIS_", "DATABASE_URL"))}
    return {**keep, "DAGSTER_HOME": str(home), "DATABASE_URL": POSTGRES_URL, "REDIS_URL": REDIS_URL}


def test_show_as_of_a_future_date_says_no_forecast_can_exist_yet(cached_run, tmp_path):
    future = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    done = command([CLI, "show", "--as-of", future], tmp_path)
    assert_one_line_error(done, 2, future, "in the future")


def test_show_as_of_todays_partition_in_the_schedule_time_zone_is_not_the_future(redis_client, tmp_path):
    """Partitions run to today in FORECAST_SCHEDULE_TIMEZONE: where that is already tomorrow on the
    machine's clock, that date's forecast is shown, not refused as one that cannot exist yet."""
    zone = "Etc/GMT-14"  # UTC+14, and the command's own clock at UTC-12: always a day ahead of it
    today = dt.datetime.now(zoneinfo.ZoneInfo(zone)).date().isoformat()
    doc = {"product_id": 1, "as_of_date": today, "summary": {"total_predicted_quantity": 1.0}, "predictions": []}
    forecast_cache.write_forecasts(redis_client, "forecast", today, [doc], ttl=600, history_ttl=600)
    forecast_cache.write_run_metadata(redis_client, "forecast", {"as_of_date": today}, ttl=600, history_ttl=600)
    done = command(
        [CLI, "show", "--as-of", today, "--json"], tmp_path, TZ="Etc/GMT+12", FORECAST_SCHEDULE_TIMEZONE=zone
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["forecast"]["as_of_date"] == today


def test_show_tells_an_unknown_product_from_one_without_a_forecast(cached_run, pg, tmp_path):
    orders = Orders(pg)
    orders.add(1, 5, dt.date(2025, 11, 3))
    unknown = command([CLI, "show", "--product", "999999"], tmp_path)
    assert_one_line_error(unknown, 1, "product 999999", "no orders")
    not_forecast = command([CLI, "show", "--product", "5"], tmp_path)
    assert_one_line_error(not_forecast, 1, "product 5", "no forecast", CACHED_AS_OF, "FORECAST_MIN_CUSTOMERS")


def test_show_says_whether_a_product_without_a_forecast_was_eligible(cached_run, pg, tmp_path):
    """The forecast's own eligibility rule, read for the one product up to the as-of date, says
    which case it is: too few customers/orders (not eligible), no orders up to that date (later
    ones do not count), or eligible (then its forecast failed or its history was too short)."""
    orders = Orders(pg)
    orders.add(1, 5, dt.date(2025, 11, 3))  # one customer, one order before the as-of date
    for customer in (1, 2, 3):
        orders.add(customer, 6, dt.date(2025, 11, 12))  # after it: not read for that date
    orders.weekly(7, [1, 2], 3, end=dt.date(2025, 11, 10))  # eligible, but nothing cached
    few = command([CLI, "show", "--product", "5"], tmp_path)
    reasons = ("not eligible", "too few customers or orders", "1 customer, 1 order", "FORECAST_MIN_ORDERS=3")
    assert_one_line_error(few, 1, "product 5", *reasons)
    later = command([CLI, "show", "--product", "6"], tmp_path)
    assert_one_line_error(later, 1, "product 6", "no orders", "to 2025-11-09")
    eligible = command([CLI, "show", "--product", "7"], tmp_path)
    assert_one_line_error(eligible, 1, "product 7", "was eligible", "failed", "too short")
    query = (
        "SELECT oi.order_id, o.customer_id, oi.product_id, o.created_at AS ordered_at, oi.quantity "
        "FROM order_items oi JOIN orders o ON o.id = oi.order_id"
    )
    custom = command([CLI, "show", "--product", "5"], tmp_path, FORECAST_SOURCE_QUERY=query)
    assert_one_line_error(custom, 1, "product 5", "not eligible", "1 customer, 1 order")
    unreadable = command([CLI, "show", "--product", "5"], tmp_path, FORECAST_SOURCE_QUERY="SELECT * FROM no_such_view")
    assert_one_line_error(unreadable, 1, "product 5", "too few customers or orders", "FORECAST_MIN_CUSTOMERS=2")


def _every_parser(parser, name="forecast-pipeline"):
    """The command's parser and every sub-command's, nested ones included (requests, alerts, reports)."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                yield from _every_parser(sub_parser, f"{name} {sub_name}")


def test_every_option_has_help_text_showing_its_default():
    from forecast_pipeline.cli.main import build_parser

    problems, seen = [], 0
    for name, command_parser in _every_parser(build_parser()):
        shown = " ".join(command_parser.format_help().split())
        for action in command_parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            seen += 1
            label = action.option_strings[0] if action.option_strings else action.dest
            if not action.help:
                problems.append(f"{name} {label}: no help")
            elif action.default not in (None, False) and f"(default: {action.default})" not in shown:
                problems.append(f"{name} {label}: default {action.default} not shown")
    assert not problems, "\n".join(problems)
    assert seen > 60  # requests, alerts and reports (and their nested commands) were walked too


@pytest.mark.parametrize(
    ("args", "exit_code", "phrase"),
    [
        (["demo-data", "--as-of", "2018-05-01"], 2, "--as-of 2018-05-01 must be from FORECAST_HISTORY_START"),
        (["demo-data", "--as-of", "2030-01-01"], 2, "orders are history"),
        (["demo-data", "--products", "-5"], 2, "--products: must be a whole number of at least 1"),
        (["requests", "enqueue"], 2, "give --as-of DATE, or --from DATE --to DATE"),
        (["requests", "enqueue", "--from", "2025-11-10"], 2, "--to is needed with --from"),
        (["requests", "enqueue", "--as-of", "2025-11-10", "--products", "1,,2"], 2, "'1,,2' is not a comma list"),
        (["requests", "enqueue", "--as-of", "2014-05-05"], 2, "before the history start"),
        (["requests", "enqueue", "--as-of", "2025-11-10", "--max-attempts", "0"], 2, "--max-attempts"),
        (
            ["requests", "enqueue", "--as-of", "2025-11-10", "--idempotency-key", ""],
            2,
            "--idempotency-key: must not be",
        ),
        (["requests", "enqueue", "--as-of", "2025-11-10", "--concurrency-key", " "], 2, "--concurrency-key: must not"),
        (["requests", "enqueue", "--as-of", "2025/11/10"], 2, "argument --as-of: '2025/11/10' is not a YYYY-MM-DD"),
        (["requests", "enqueue", "--from", "2025-11-01", "--to", "10.11.2025"], 2, "argument --to: '10.11.2025'"),
        (["requests", "enqueue", "--as-of", "2025-11-10", "--products="], 2, "argument --products: no product ids"),
        (["requests", "list", "--status", "done"], 2, "invalid choice: 'done'"),
        (["alerts", "add", "--source", "s", "--metric", "m", "--operator", ">", "--threshold", "nan"], 2, "finite"),
        (["alerts", "notifications", "resend"], 2, "give the ids"),
        (["reports", "add-schedule", "--account", "a", "--name", "n", "--cadence", "hourly"], 2, "invalid choice"),
        (["reports", "add-plan", "--name", "pro", "--monthly-limit", "-3"], 2, "must be 0 or more"),
    ],
)
def test_usage_errors_of_requests_alerts_and_reports_exit_2_in_one_line(tmp_path, args, exit_code, phrase):
    done = command([CLI, *args], tmp_path)
    assert_one_line_error(done, exit_code, phrase)


def test_a_misspelled_variable_is_warned_about_once_with_the_closest_name(tmp_path):
    done = command([CLI, "demo-data", "--as-of", "2026/11/30"], tmp_path, FORECAST_WORKER="4")
    warnings = [line for line in done.stderr.splitlines() if "FORECAST_WORKER " in line + " "]
    assert warnings == ["forecast-pipeline: warning: unknown variable FORECAST_WORKER (did you mean FORECAST_WORKERS?)"]


def test_the_code_location_logs_a_misspelled_variable_once_when_it_loads(tmp_path):
    done = command(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "forecast_pipeline"], tmp_path, FORECAST_WORKER="4"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert output.count("unknown variable FORECAST_WORKER (did you mean FORECAST_WORKERS?)") == 1, output[-2000:]


def test_only_variables_like_ours_are_warned_about():
    from forecast_pipeline.settings import unknown_variable_warnings

    environ = {
        "FORECAST_WORKERS": "4",  # known
        "REPORT_SMTP_HOTS": "mail",  # close to REPORT_SMTP_HOST
        "FORECAST_COLOUR": "blue",  # our prefix, nothing close
        "TEST_REDIS_URL": "redis://127.0.0.1:6379/1",  # someone else's
        "PATH": "/usr/bin",
    }
    assert unknown_variable_warnings(environ) == [
        "unknown variable FORECAST_COLOUR (not read by forecast_pipeline; see the README's settings)",
        "unknown variable REPORT_SMTP_HOTS (did you mean REPORT_SMTP_HOST?)",
    ]


def test_verbose_adds_the_traceback_after_the_one_line(tmp_path):
    url = "postgresql://postgres@127.0.0.1:5432/no_such_db"
    done = command([CLI, "--verbose", "demo-data", "--products", "5"], tmp_path, DATABASE_URL=url)
    assert done.returncode == 1
    assert "does not exist" in first_line(done.stderr)
    assert "Traceback (most recent call last)" in done.stderr.splitlines()[1]


def test_commands_that_touch_no_dagster_run_do_not_import_dagster(tmp_path):
    """Importing Dagster costs seconds before a command's first line; only the commands that
    need it (none of these) may pay for it. Guards the start-up of every `forecast-pipeline` call."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('HEAVY', sorted(m for m in ('dagster', 'pandas') if m in sys.modules)))\n"
        "sys.argv = ['forecast-pipeline', *sys.argv[1:]]\n"
        "from forecast_pipeline.cli.main import main\n"
        "sys.exit(main())\n"
    )
    for args in (["--help"], ["show"], ["requests", "list"], ["alerts", "evaluate", "--help"], ["reports", "list"]):
        done = command([str(BIN / "python"), "-c", probe, *args], tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
        assert "HEAVY []" in done.stdout, (args, done.stdout[-500:], done.stderr[-2000:])


def test_show_of_one_product_reads_that_product_not_the_whole_date(tmp_path):
    """``show --product ID --as-of D`` read every forecast of the date (HGETALL: gigabytes at a
    million products) to print one (found by a hunting helper). Counted on a Redis of its own."""
    from forecast_pipeline_tests.conftest import private_redis

    docs = [
        {"product_id": p, "as_of_date": CACHED_AS_OF, "summary": {"total_predicted_quantity": float(p)}}
        for p in range(1, 51)
    ]
    with private_redis() as (url, _):
        client = redis.Redis.from_url(url, decode_responses=True)
        forecast_cache.write_forecasts(client, "forecast", CACHED_AS_OF, docs, ttl=600, history_ttl=600)
        metadata = {"as_of_date": CACHED_AS_OF, "successful": 50, "failed": 0}
        forecast_cache.write_run_metadata(client, "forecast", metadata, ttl=600, history_ttl=600)
        client.config_resetstat()
        shown = command([CLI, "show", "--json", "--product", "7", "--as-of", CACHED_AS_OF], tmp_path, REDIS_URL=url)
        calls = {name: stats["calls"] for name, stats in client.info("commandstats").items()}
        largest = command([CLI, "show", "--json"], tmp_path, REDIS_URL=url)
        client.close()
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["forecast"]["product_id"] == 7
    assert "cmdstat_hgetall" not in calls and "cmdstat_hscan" not in calls, calls
    assert largest.returncode == 0 and json.loads(largest.stdout)["forecast"]["product_id"] == 50
