"""Shared fixtures: a real Postgres database, a real SQLite file and a real Redis database.

Services come from the environment (``.ci/run`` starts them when they are not answering):
``TEST_POSTGRES_URL`` (default postgresql://postgres@127.0.0.1:5432/forecast_test, created if
missing) and ``TEST_REDIS_URL`` (default redis://127.0.0.1:6379/1, flushed per test); under
pytest-xdist each worker after the first gets its own (see :func:`worker_database`).
"""

import contextlib
import datetime as dt
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from dagster import DagsterInstance

from forecast_pipeline.connections import make_engine
from forecast_pipeline.defs.resources import build_resources
from forecast_pipeline.settings import load_settings
from forecast_pipeline.source import source_schema

# pytest-xdist runs the suite in worker processes gw0, gw1, ... (scripts/test.sh: two): worker n > 0
# uses its own databases (name + "_w<n>") and Redis databases (number + n), so workers never share one.
XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
if XDIST_WORKER > 5:
    raise RuntimeError("at most 6 pytest-xdist workers: Redis databases 1-6 and 7-12 would overlap")


def worker_database_name(name: str) -> str:
    """This worker's own copy of database ``name`` (``name`` itself for the first worker)."""
    return f"{name}_w{XDIST_WORKER}" if XDIST_WORKER else name


def worker_database(url: str) -> str:
    """``url`` with this worker's own database name (unchanged for the first worker)."""
    parsed = sa.engine.make_url(url)
    return parsed.set(database=worker_database_name(parsed.database)).render_as_string(hide_password=False)


def worker_redis(url: str) -> str:
    """``url`` with this worker's own Redis database number (unchanged for the first worker)."""
    base, _, number = url.rpartition("/")
    return f"{base}/{int(number or 0) + XDIST_WORKER}"


POSTGRES_URL = worker_database(
    os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/forecast_test")
)
REDIS_URL = worker_redis(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/1"))
AS_OF = dt.date(2025, 11, 10)
BIN = Path(sys.executable).parent  # the venv's console scripts: dagster, forecast-pipeline, ...


def _ensure_postgres_database(url: str) -> None:
    target = sa.engine.make_url(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    admin = make_engine(target.set(database="postgres").render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}).first()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_engine():
    _ensure_postgres_database(POSTGRES_URL)
    engine = make_engine(POSTGRES_URL)
    yield engine
    engine.dispose()


def _fresh_schema(engine: sa.Engine) -> sa.Engine:
    source_schema.metadata.drop_all(engine)
    with engine.begin() as conn:
        for table in ("legacy_order_item", "legacy_order", "legacy_client_agreement", "forecast_predictions"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    source_schema.create_schema(engine)
    return engine


@pytest.fixture
def pg(postgres_engine):
    """The Postgres test database with empty default tables."""
    return _fresh_schema(postgres_engine)


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'orders.sqlite'}")
    yield _fresh_schema(engine)
    engine.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def any_db(request):
    """Each test using this runs once on Postgres and once on SQLite."""
    return request.getfixturevalue("pg" if request.param == "postgres" else "sqlite_engine")


@pytest.fixture
def instance():
    """An ephemeral Dagster instance for one test."""
    with DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


class Orders:
    """Writes orders into the default schema: ``add(customer, product, day, qty)``."""

    def __init__(self, engine: sa.Engine, first_order_id: int = 1):
        self.engine = engine
        self._ids = itertools.count(first_order_id)
        self._customers: set[int] = set()
        self._products: set[int] = set()

    def add(self, customer: int, product: int | None, when: dt.date | dt.datetime, quantity: float = 1.0) -> int:
        """One order with one line; returns the order id."""
        return self.add_order(customer, [(product, quantity)], when)

    def add_order(self, customer: int, lines: list[tuple[int | None, float]], when: dt.date | dt.datetime) -> int:
        when = when if isinstance(when, dt.datetime) else dt.datetime.combine(when, dt.time(10, 0))
        order_id = next(self._ids)
        with self.engine.begin() as conn:
            if customer not in self._customers:
                conn.execute(source_schema.customers.insert(), {"id": customer, "name": f"c{customer}"})
                self._customers.add(customer)
            for product, _ in lines:
                if product is not None and product not in self._products:
                    conn.execute(source_schema.products.insert(), {"id": product, "name": f"p{product}"})
                    self._products.add(product)
            conn.execute(source_schema.orders.insert(), {"id": order_id, "customer_id": customer, "created_at": when})
            conn.execute(
                source_schema.order_items.insert(),
                [{"order_id": order_id, "product_id": p, "quantity": q} for p, q in lines],
            )
        return order_id

    def weekly(self, product: int, customers: list[int], weeks: int, quantity: float = 5.0, end: dt.date = AS_OF):
        """One order a week for ``weeks`` weeks before ``end``, customers taking turns."""
        with self.engine.begin() as conn:
            for c in customers:
                if c not in self._customers:
                    conn.execute(source_schema.customers.insert(), {"id": c, "name": f"c{c}"})
                    self._customers.add(c)
            if product not in self._products:
                conn.execute(source_schema.products.insert(), {"id": product, "name": f"p{product}"})
                self._products.add(product)
            for w in range(weeks):
                order_id = next(self._ids)
                when = dt.datetime.combine(end - dt.timedelta(days=7 * (weeks - w) - 2), dt.time(9))
                conn.execute(
                    source_schema.orders.insert(),
                    {"id": order_id, "customer_id": customers[w % len(customers)], "created_at": when},
                )
                conn.execute(
                    source_schema.order_items.insert(),
                    {"order_id": order_id, "product_id": product, "quantity": quantity},
                )


@pytest.fixture
def orders(any_db):
    return Orders(any_db)


@pytest.fixture
def pg_orders(pg):
    return Orders(pg)


def forecast_resources(database_url: str, redis_url: str = REDIS_URL, **env: str) -> dict:
    """The resources definitions.py builds, from these variables instead of the process's."""
    environ = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "FORECAST_WORKERS": "1", **env}
    return build_resources(load_settings(environ), environ={})


def materialize_date(assets: list, database: sa.Engine, instance, as_of: dt.date = AS_OF, **kwargs):
    """Materialize ``assets`` for one as-of date against ``database`` and the test Redis;
    ``raise_on_error``/``run_config`` go to Dagster, anything else is an environment variable."""
    from dagster import materialize

    options = {k: kwargs.pop(k) for k in ("raise_on_error", "run_config") if k in kwargs}
    return materialize(
        assets,
        partition_key=as_of.isoformat(),
        resources=forecast_resources(engine_url(database), **kwargs),
        instance=instance,
        **{"raise_on_error": True, **options},
    )


def materialize_range(assets: list, database: sa.Engine, instance, first: dt.date, last: dt.date, **kwargs):
    """:func:`materialize_date` for the as-of dates ``first``..``last`` in one run (a backfill's
    single-run range, as the UI and the request queue launch it)."""
    from dagster import materialize

    options = {k: kwargs.pop(k) for k in ("raise_on_error", "run_config") if k in kwargs}
    return materialize(
        assets,
        resources=forecast_resources(engine_url(database), **kwargs),
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
        **{"raise_on_error": True, **options},
    )


def engine_url(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def command(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a console command as a user would: a fresh DAGSTER_HOME, the test database and Redis."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FORECAST_", "REDIS_", "DATABASE_URL"))},
        "DAGSTER_HOME": str(home),
        "DATABASE_URL": POSTGRES_URL,
        "REDIS_URL": REDIS_URL,
        "FORECAST_WORKERS": "2",
        **env,
    }
    return subprocess.run(args, env=environ, capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def private_redis(*options: str):
    """A redis-server of the test's own on a free port, for what must not touch the shared one
    (maxmemory, a password, being stopped). Yields its URL and process; stopped afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *options],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    password = dict(zip(options[::2], options[1::2], strict=False)).get("--requirepass")
    client = redis.Redis.from_url(url, password=password)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url, process
    finally:
        client.close()
        process.kill()
        process.wait()
