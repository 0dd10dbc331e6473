"""How long migration 0002 (forecast_jobs -> forecast_requests) takes on a large queue.

Brings a scratch database to revision 0001, fills ``forecast_jobs`` with ``--rows`` rows and
``forecast_job_audit`` with one ``queued`` row each (PostgreSQL's trigger writes them; on SQLite
they are inserted), then times the upgrade to head and checks that every row is still there under
the new names. PostgreSQL renames in place, so its time should not grow with the rows; SQLite
rebuilds the two tables, so its time does.

Usage (from the repository root; the PostgreSQL database's public schema is dropped)::

    .venv/bin/python benchmarks/request_rename_migration.py --rows 200000 \\
        --postgres-url postgresql://postgres@127.0.0.1:5432/<scratch db>
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from forecast_pipeline.app_db.schema import alembic_config, upgrade_app_schema
from forecast_pipeline.connections import make_engine

PARAMETERS = '{"as_of_date": "2025-11-10"}'


def _at_0001(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")


def _fill_postgres(engine: sa.Engine, rows: int) -> None:
    with engine.begin() as conn:  # the audit trigger writes each row's queued entry
        conn.execute(
            sa.text(
                "INSERT INTO forecast_jobs (parameters, priority, status, attempts) "
                "SELECT CAST(:p AS json), i % 5, (ARRAY['queued','succeeded','failed'])[1 + i % 3], i % 3 "
                "FROM generate_series(1, :n) AS i"
            ),
            {"p": PARAMETERS, "n": rows},
        )


def _fill_sqlite(engine: sa.Engine, rows: int) -> None:
    statuses = ("queued", "succeeded", "failed")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO forecast_jobs (id, parameters, priority, status, attempts) VALUES (:i, :p, :pr, :s, :a)"
            ),
            [{"i": i, "p": PARAMETERS, "pr": i % 5, "s": statuses[i % 3], "a": i % 3} for i in range(1, rows + 1)],
        )
        conn.execute(
            sa.text("INSERT INTO forecast_job_audit (job_id, event) VALUES (:i, 'queued')"),
            [{"i": i} for i in range(1, rows + 1)],
        )


def _counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(sa.text("SELECT count(*) FROM forecast_requests")).scalar_one(),
            conn.execute(sa.text("SELECT count(*) FROM forecast_request_audit")).scalar_one(),
        )


def measure(engine: sa.Engine, rows: int) -> dict:
    _at_0001(engine)
    started = time.perf_counter()
    (_fill_postgres if engine.dialect.name == "postgresql" else _fill_sqlite)(engine, rows)
    filled = time.perf_counter() - started
    started = time.perf_counter()
    upgrade_app_schema(engine)
    migrated = time.perf_counter() - started
    kept = _counts(engine)
    assert kept == (rows, rows), kept
    return {"backend": engine.dialect.name, "rows": rows, "fill_s": round(filled, 2), "migrate_s": round(migrated, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--postgres-url", required=True, help="a scratch database: its public schema is dropped")
    args = parser.parse_args()
    results = []
    pg = make_engine(args.postgres_url)
    try:
        with pg.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
        results.append(measure(pg, args.rows))
    finally:
        pg.dispose()
    with tempfile.TemporaryDirectory() as scratch:
        lite = make_engine(f"sqlite:///{Path(scratch) / 'app.sqlite'}")
        try:
            results.append(measure(lite, args.rows))
        finally:
            lite.dispose()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
