"""The commands a user types: `dagster asset materialize` and `forecast-pipeline`, as subprocesses."""

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from forecast_pipeline_tests.conftest import AS_OF, BIN, Orders, command

pytestmark = pytest.mark.integration


def materialize_cli(tmp_path: Path, partition: str = AS_OF.isoformat(), **env: str) -> subprocess.CompletedProcess:
    args = [str(BIN / "dagster"), "asset", "materialize", "-m", "forecast_pipeline", "--select", "*"]
    return command([*args, "--partition", partition], tmp_path, **env)


@pytest.fixture
def demo_book(pg, redis_client, tmp_path):
    done = command(
        [str(BIN / "forecast-pipeline"), "demo-data", "--products", "60", "--customers", "80", "--as-of", "2025-11-20"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Loaded" in done.stdout
    return pg


def test_dagster_asset_materialize_caches_forecasts_and_records_the_run(demo_book, redis_client, tmp_path):
    done = materialize_cli(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    assert meta["as_of_date"] == "2025-11-10" and meta["successful"] > 40 and meta["failed"] == 0
    assert redis_client.hlen("forecast:asof:2025-11-10") == meta["successful"]
    # the run is in the instance under DAGSTER_HOME
    from dagster import AssetKey, DagsterInstance

    os.environ["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    try:
        with DagsterInstance.get() as instance:
            record = instance.get_latest_materialization_event(AssetKey("product_forecasts"))
            assert record.asset_materialization.partition == "2025-11-10"
            assert record.asset_materialization.metadata["successful"].value == meta["successful"]
    finally:
        del os.environ["DAGSTER_HOME"]

    shown = command([str(BIN / "forecast-pipeline"), "show"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert '"as_of_date": "2025-11-10"' in shown.stdout and "80% interval" in shown.stdout


FAILING_MODEL = """
import numpy as np
from forecast_pipeline.forecasting import engine

fit = engine.forecast_batch


def forecast_batch(y, horizon):  # a model that cannot fit a week of 7777 units, in every process
    if (np.nan_to_num(y) == 7777).any():
        raise FloatingPointError("cannot fit")
    return fit(y, horizon)


engine.forecast_batch = forecast_batch
"""


def test_a_failure_rate_over_the_limit_makes_the_cli_exit_non_zero_and_publishes_nothing(
    demo_book, redis_client, tmp_path
):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAILING_MODEL)
    with demo_book.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE order_items SET quantity = 7777 WHERE id IN "
                "(SELECT MIN(id) FROM order_items WHERE product_id % 4 = 0 GROUP BY product_id)"
            )
        )
    done = materialize_cli(tmp_path, PYTHONPATH=str(hook))
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "failure_rate_within_limit" in output and "nothing was published for 2025-11-10" in output
    assert redis_client.get("forecast:metadata:last_run") is None
    assert redis_client.hlen("forecast:asof:2025-11-10") == 0


def test_bad_config_stops_the_cli_naming_the_variable(tmp_path):
    done = materialize_cli(tmp_path, FORECAST_WORKERS="abc", FORECAST_CACHE_TTL="0")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "FORECAST_WORKERS='abc' is not a whole number" in output
    assert "FORECAST_CACHE_TTL=0 must be at least 1" in output


def test_bad_database_driver_is_reported_by_forecast_pipeline_check(tmp_path):
    done = command([str(BIN / "forecast-pipeline"), "check"], tmp_path, DATABASE_URL="mongodb://u:pw@h/db")
    assert done.returncode == 2
    assert "DATABASE_URL='mongodb://u:***@h/db' cannot be used" in done.stderr


def test_check_reports_missing_tables_and_redis(tmp_path, pg):
    with pg.begin() as conn:
        conn.execute(sa.text("DROP TABLE order_items"))
    done = command([str(BIN / "forecast-pipeline"), "check"], tmp_path, REDIS_URL="redis://127.0.0.1:6390/0")
    assert done.returncode == 1
    assert "MISSING order_items" in done.stdout
    assert "redis: FAILED" in done.stdout and "6390" in done.stdout
    ok = command([str(BIN / "forecast-pipeline"), "init-db"], tmp_path)
    assert ok.returncode == 0
    checked = command([str(BIN / "forecast-pipeline"), "check"], tmp_path)
    assert checked.returncode == 0, checked.stdout


def test_a_partition_range_runs_once_and_show_reads_each_date(demo_book, redis_client, tmp_path):
    args = [str(BIN / "dagster"), "asset", "materialize", "-m", "forecast_pipeline", "--select", "*"]
    done = command([*args, "--partition-range", "2025-11-09...2025-11-10"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    latest = command([str(BIN / "forecast-pipeline"), "show", "--json"], tmp_path)
    assert latest.returncode == 0, latest.stderr
    doc = json.loads(latest.stdout)  # one valid JSON document
    assert doc["metadata"]["as_of_date"] == "2025-11-10" and doc["forecast"]["as_of_date"] == "2025-11-10"
    product = doc["forecast"]["product_id"]
    older = command(
        [str(BIN / "forecast-pipeline"), "show", "--json", "--as-of", "2025-11-09", "--product", str(product)], tmp_path
    )
    assert older.returncode == 0, older.stderr
    older_doc = json.loads(older.stdout)
    assert older_doc["metadata"]["as_of_date"] == "2025-11-09"
    assert older_doc["forecast"]["as_of_date"] == "2025-11-09"
    assert older_doc["forecast"]["predictions"][0]["week_start"] == "2025-11-09"
    bad = command([str(BIN / "forecast-pipeline"), "show", "--as-of", "yesterday"], tmp_path)
    assert bad.returncode == 2 and "not a YYYY-MM-DD date" in bad.stderr and bad.stdout == ""  # usage error


def test_requests_enqueue_and_list(pg, tmp_path):
    with pg.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS forecast_request_audit, forecast_requests CASCADE"))
    orders = Orders(pg)
    for product in (4, 5):  # eligible from the range's first date on: enqueue checks it
        orders.weekly(product, [1, 2], 6, end=dt.date(2025, 11, 1))
    queued = command(
        [
            str(BIN / "forecast-pipeline"),
            "requests",
            "enqueue",
            "--from",
            "2025-11-01",
            "--to",
            "2025-11-10",
            "--products",
            "4,5",
            "--priority",
            "7",
        ],
        tmp_path,
    )
    assert queued.returncode == 0, queued.stderr
    assert "deprecated" not in queued.stderr
    assert queued.stdout.startswith("queued forecast request ")
    listed = command([str(BIN / "forecast-pipeline"), "requests", "list"], tmp_path)
    assert '{"from": "2025-11-01", "to": "2025-11-10", "product_ids": [4, 5]}' in listed.stdout
    assert " queued " in listed.stdout
    refused = command([str(BIN / "forecast-pipeline"), "requests", "enqueue", "--as-of", "2014-05-05"], tmp_path)
    assert refused.returncode == 2 and "before the history start" in refused.stderr  # a usage error


def test_requests_enqueue_refuses_products_not_eligible_and_queues_nothing(pg, tmp_path):
    """A request naming a product the as-of date cannot forecast would only fail in its run: the
    command refuses it at once (exit 2, one line naming each product and why), queuing nothing."""
    orders = Orders(pg)
    orders.weekly(5, [1, 2], 6, end=dt.date(2025, 11, 1))  # eligible from 2025-11-01
    orders.add(1, 6, dt.date(2025, 10, 1))  # one customer, two orders: too few of both
    orders.add(1, 6, dt.date(2025, 10, 8))
    for customer in (1, 2, 3):  # eligible for 2025-11-10, no orders before 2025-11-01
        orders.add(customer, 7, dt.date(2025, 11, 2 + customer))
    enqueue = [str(BIN / "forecast-pipeline"), "requests", "enqueue"]

    def queued() -> int:
        with pg.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM forecast_requests")).scalar_one()

    command([*enqueue, "--as-of", "2025-11-10"], tmp_path)  # makes the queue's tables
    before = queued()
    refused = command([*enqueue, "--as-of", "2025-11-10", "--products", "5,6,7,999999"], tmp_path)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    (line,) = refused.stderr.splitlines()
    assert "not eligible for as-of 2025-11-10" in line and "nothing queued" in line
    assert "6 (1 customer, 2 orders)" in line and "999999 (no orders)" in line
    assert "FORECAST_MIN_CUSTOMERS=2" in line and "FORECAST_MIN_ORDERS=3" in line
    assert " 5 " not in line and "7 (" not in line and refused.stdout == ""
    # a range needs them from its first date (a product eligible then stays eligible later)
    ranged = command([*enqueue, "--from", "2025-11-01", "--to", "2025-11-10", "--products", "5,7"], tmp_path)
    assert ranged.returncode == 2 and "as-of 2025-11-01" in ranged.stderr and "7 (no orders)" in ranged.stderr
    # through FORECAST_SOURCE_QUERY the same rule reads the user's query
    query = (
        "SELECT oi.order_id, o.customer_id, oi.product_id, o.created_at AS ordered_at, oi.quantity "
        "FROM order_items oi JOIN orders o ON o.id = oi.order_id"
    )
    custom = command([*enqueue, "--as-of", "2025-11-10", "--products", "6"], tmp_path, FORECAST_SOURCE_QUERY=query)
    assert custom.returncode == 2 and "6 (1 customer, 2 orders)" in custom.stderr
    assert queued() == before
    for dates, products in (
        (["--as-of", "2025-11-10"], "7,5,7"),
        (["--from", "2025-11-01", "--to", "2025-11-10"], "5"),
    ):
        done = command([*enqueue, *dates, "--products", products], tmp_path)
        assert done.returncode == 0 and done.stdout.startswith("queued forecast request "), done.stderr
    assert queued() == before + 2
    with pg.connect() as conn:
        stored = conn.execute(sa.text("SELECT parameters FROM forecast_requests ORDER BY id")).scalars().all()
    assert stored[-2]["product_ids"] == [7, 5]  # each once, in the order given


def test_requests_list_json_gives_each_requests_whole_error(pg, tmp_path):
    """The table cuts the error at 80 characters: the ids of the products that were not eligible
    came after the cut, and only psql could show them."""
    queued = command([str(BIN / "forecast-pipeline"), "requests", "enqueue", "--as-of", "2025-11-10"], tmp_path)
    request_id = int(queued.stdout.split()[-1])
    error = "Products not eligible for as-of 2025-11-10 (unknown, or too few customers/orders before it): [999999]"
    with pg.begin() as conn:
        conn.execute(
            sa.text("UPDATE forecast_requests SET status = 'failed', error = :e WHERE id = :i"),
            {"e": error, "i": request_id},
        )
    listed = command([str(BIN / "forecast-pipeline"), "requests", "list", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = next(r for r in rows if r["id"] == request_id)
    assert mine["error"] == error and mine["status"] == "failed"
    assert mine["parameters"] == {"as_of_date": "2025-11-10"}


def test_jobs_is_the_deprecated_name_of_requests(pg, tmp_path):
    """``jobs`` (the name before the rename) still works, saying once on stderr what to use."""
    with pg.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS forecast_request_audit, forecast_requests CASCADE"))
    notice = "forecast-pipeline: `jobs` is deprecated, use `requests` (same subcommands and options)"
    queued = command([str(BIN / "forecast-pipeline"), "jobs", "enqueue", "--as-of", "2025-11-10"], tmp_path)
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.startswith("queued forecast request ")
    assert queued.stderr.splitlines().count(notice) == 1
    request_id = int(queued.stdout.split()[-1])
    listed = command([str(BIN / "forecast-pipeline"), "requests", "list"], tmp_path)
    assert any(line.split()[:2] == [str(request_id), "queued"] for line in listed.stdout.splitlines())
    cancelled = command([str(BIN / "forecast-pipeline"), "jobs", "cancel", str(request_id)], tmp_path)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"forecast request {request_id}: cancelled"
    assert notice in cancelled.stderr
    refused = command([str(BIN / "forecast-pipeline"), "jobs", "enqueue"], tmp_path)
    assert refused.returncode == 2 and "forecast-pipeline jobs enqueue: give --as-of DATE" in refused.stderr
