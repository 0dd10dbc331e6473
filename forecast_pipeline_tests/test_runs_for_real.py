"""Runs through the real CLI: two materializations of one date racing, and secrets in every URL
form kept out of the output, the logs and Dagster's storage."""

import os
import subprocess
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from dagster import DagsterInstance

from forecast_pipeline.cache import forecast_cache
from forecast_pipeline_tests.conftest import AS_OF, BIN, POSTGRES_URL, REDIS_URL, command, private_redis

pytestmark = pytest.mark.integration
PARTITION = AS_OF.isoformat()


def load_products(engine: sa.Engine, products: int, weeks: int = 20) -> None:
    """``products`` products with two customers and one order a week each, written by Postgres."""
    with engine.begin() as conn:
        for table, count in (("customers", 2 * products), ("products", products)):
            conn.execute(sa.text(f"INSERT INTO {table} SELECT g, 'n' || g FROM generate_series(1, :n) g"), {"n": count})
        conn.execute(
            sa.text(
                "INSERT INTO orders (id, customer_id, created_at) "
                "SELECT p * 1000 + w, 2 * p - (w % 2), "
                "CAST(:as_of AS timestamp) - (7 * (:weeks - w) - 2) * INTERVAL '1 day' "
                "FROM generate_series(1, :n) p, generate_series(0, :weeks - 1) w"
            ),
            {"n": products, "weeks": weeks, "as_of": AS_OF},
        )
        conn.execute(
            sa.text(
                "INSERT INTO order_items (order_id, product_id, quantity) "
                "SELECT p * 1000 + w, p, 1 + p % 10 FROM generate_series(1, :n) p, generate_series(0, :weeks - 1) w"
            ),
            {"n": products, "weeks": weeks},
        )


def materialize_command() -> list[str]:
    return [str(BIN / "dagster"), "asset", "materialize", "-m", "forecast_pipeline"] + [
        "--select",
        "*",
        "--partition",
        PARTITION,
    ]


def test_two_cli_runs_of_one_date_both_leave_the_date_complete(pg, redis_client, tmp_path):
    products = 4000
    load_products(pg, products)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)):
        pass  # storage created once, as `dagster dev` has it before any run (two first runs race on it)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FORECAST_", "REDIS_", "DATABASE_URL"))},
        "DAGSTER_HOME": str(home),
        "DATABASE_URL": POSTGRES_URL,
        "REDIS_URL": REDIS_URL,
        "FORECAST_WORKERS": "1",
    }
    runs = [
        subprocess.Popen(materialize_command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [r.communicate(timeout=600)[0] for r in runs]

    assert [r.returncode for r in runs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert redis_client.hlen(forecast_cache.history_key("forecast", PARTITION)) == products
    assert all(redis_client.ttl(k) > 0 for k in redis_client.scan_iter("*", count=1000))
    with pg.connect() as conn:
        rows = conn.execute(sa.text("SELECT COUNT(*) FROM forecast_predictions WHERE as_of_date = :d"), {"d": AS_OF})
        assert rows.scalar_one() == 12 * products


SECRETS = ("pg-s3cret", "app-s3cret", "redis-s3cret")


def _files_containing(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_secrets_in_every_url_form_stay_out_of_output_logs_and_storage(pg, tmp_path):
    load_products(pg, 5)
    database = sa.engine.make_url(POSTGRES_URL)
    with private_redis("--requirepass", "redis-s3cret") as (redis_url, _):
        env = {  # trust authentication lets Postgres accept any password
            "DATABASE_URL": database.set(password="pg-s3cret").render_as_string(hide_password=False),
            "APP_DATABASE_URL": f"{POSTGRES_URL}?password=app-s3cret",
            "REDIS_URL": f"{redis_url}?password=redis-s3cret",
        }
        done = command(materialize_command(), tmp_path, **env)
        assert done.returncode == 0, done.stderr[-3000:]
        client = redis.Redis.from_url(redis_url, password="redis-s3cret")
        assert client.hlen(forecast_cache.history_key("forecast", PARTITION)) == 5
        client.close()
        checked = command([str(BIN / "forecast-pipeline"), "check"], tmp_path, **env)
        outputs = [done.stdout + done.stderr, checked.stdout + checked.stderr]

        # the same secrets where nothing answers: the errors name the URL, redacted
        unreachable = {
            "DATABASE_URL": "postgresql://postgres:pg-s3cret@127.0.0.1:1/nowhere",
            "APP_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere?password=app-s3cret",
            "REDIS_URL": "redis://127.0.0.1:1/0?password=redis-s3cret",
        }
        failed = command([str(BIN / "forecast-pipeline"), "check"], tmp_path, **unreachable)
        assert failed.returncode == 1
        assert "127.0.0.1:1" in failed.stdout + failed.stderr
        outputs.append(failed.stdout + failed.stderr)
        schemeless = "admin:redis-s3cret@cache:6379"
        bad_scheme = command([str(BIN / "forecast-pipeline"), "check"], tmp_path, REDIS_URL=schemeless)
        assert bad_scheme.returncode == 2
        outputs.append(bad_scheme.stdout + bad_scheme.stderr)

    for secret in SECRETS:
        assert not [o for o in outputs if secret in o], secret
        assert not _files_containing(tmp_path / "dagster_home", secret), secret
