"""``forecast_predictions``: every weekly prediction as a row, for SQL consumers and job results.

A run replaces an as-of date's rows in one transaction: a reader sees the old rows or the new
ones, and a product that is no longer forecast for that date loses its rows. A run for some
products replaces only theirs. On PostgreSQL runs of one date take a transaction lock, delete the
rows they replace and COPY the new ones straight into the table: nothing of the date (or of those
products) is left to conflict with, and a racing run waits for the lock, so racing runs leave one
run's rows, never a mix or a duplicate. SQLite (one writer at a time) upserts with
``INSERT ... ON CONFLICT DO UPDATE`` on (as_of_date, product_id, week_start).
"""

import datetime as dt
import io
from collections.abc import Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY

from forecast_pipeline.app_db.queue_tables import forecast_predictions

BATCH_ROWS = 2000  # SQLite: 10 columns x 2000 rows stays under its bind-parameter limit


def rows_of(doc: dict) -> list[dict]:
    as_of = dt.date.fromisoformat(doc["as_of_date"])
    generated = dt.datetime.fromisoformat(doc["model_metadata"]["generated_at"].replace("Z", "+00:00"))
    return [
        {
            "as_of_date": as_of,
            "product_id": doc["product_id"],
            "week_start": dt.date.fromisoformat(week["week_start"]),
            "week_end": dt.date.fromisoformat(week["week_end"]),
            "predicted_quantity": week["predicted_quantity"],
            "confidence_lower": week["confidence_lower"],
            "confidence_upper": week["confidence_upper"],
            "active_customers": week["active_customers"],
            "model_type": doc["model_metadata"]["model_type"],
            "generated_at": generated,
        }
        for week in doc["predictions"]
    ]


COLUMNS = [c.name for c in forecast_predictions.columns]
KEYS = ("as_of_date", "product_id", "week_start")


def replace(engine: sa.Engine, as_of: dt.date, docs: Iterable[dict], products: set[int] | None = None) -> int:
    """Make ``as_of``'s rows exactly these forecasts' weeks (with ``products``: only those
    products' rows). Returns how many rows were written. ``docs`` is consumed once, in chunks of
    ``CHUNK_DOCS``: a million forecasts (12 million rows) never sit in memory at once."""
    if engine.dialect.name not in ("postgresql", "sqlite"):
        raise ValueError(f"forecast_predictions needs PostgreSQL or SQLite, not {engine.dialect.name}")
    table = forecast_predictions
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"forecast_predictions:{as_of}"))))
        delete = table.delete().where(table.c.as_of_date == as_of)
        if products is not None:
            if not products:
                return 0
            ids = sorted(products)
            if engine.dialect.name == "postgresql":
                delete = delete.where(
                    table.c.product_id == sa.any_(sa.bindparam("ids", ids, type_=ARRAY(sa.BigInteger)))
                )
            else:
                delete = delete.where(table.c.product_id.in_(sa.bindparam("ids", ids, expanding=True)))
        conn.execute(delete)
        if products is not None:  # only what was deleted is written: nothing left to conflict with
            docs = (doc for doc in docs if doc["product_id"] in products)
        return (_copy_postgres if engine.dialect.name == "postgresql" else _upsert_batches)(conn, docs)


CHUNK_DOCS = 5000


def _row_chunks(docs: Iterable[dict]) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for i, doc in enumerate(docs, start=1):
        chunk.extend(rows_of(doc))
        if i % CHUNK_DOCS == 0:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


COPY_COLUMNS = (
    "as_of_date",
    "product_id",
    "week_start",
    "week_end",
    "predicted_quantity",
    "confidence_lower",
    "confidence_upper",
    "active_customers",
    "model_type",
    "generated_at",
)


def _copy_postgres(conn: sa.Connection, docs: Iterable[dict]) -> int:
    """COPY the rows into the table, ``CHUNK_DOCS`` forecasts at a time, after :func:`replace`
    deleted the ones they replace. The CSV is written straight from the documents' strings and
    numbers (PostgreSQL parses the ISO dates and timestamps), not through a dict and date objects
    per row, which cost more than the COPY (benchmarks/RESULTS.md)."""
    cursor = conn.connection.dbapi_connection.cursor()
    statement = f"COPY forecast_predictions ({', '.join(COPY_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
    written = 0
    buffer, docs_in_buffer = io.StringIO(), 0
    for doc in docs:
        meta = doc["model_metadata"]
        head = f"{_csv_text(doc['as_of_date'])},{int(doc['product_id'])},"
        tail = f",{_csv_text(meta['model_type'])},{_csv_text(meta['generated_at'])}\n"
        for week in doc["predictions"]:
            buffer.write(
                f"{head}{_csv_text(week['week_start'])},{_csv_text(week['week_end'])},"
                f"{float(week['predicted_quantity'])!r},{float(week['confidence_lower'])!r},"
                f"{float(week['confidence_upper'])!r},{int(week['active_customers'])}{tail}"
            )
            written += 1
        docs_in_buffer += 1
        if docs_in_buffer == CHUNK_DOCS:
            buffer.seek(0)
            cursor.copy_expert(statement, buffer)
            buffer, docs_in_buffer = io.StringIO(), 0
    if docs_in_buffer:
        buffer.seek(0)
        cursor.copy_expert(statement, buffer)
    return written


def _csv_text(value: str) -> str:
    """A quoted CSV field: a stray comma or quote cannot shift the columns (PostgreSQL checks the
    value's type itself)."""
    return f'"{value.replace(chr(34), chr(34) * 2)}"'


def _upsert_batches(conn: sa.Connection, docs: Iterable[dict]) -> int:
    written = 0
    for rows in _row_chunks(docs):
        for i in range(0, len(rows), BATCH_ROWS):
            batch = rows[i : i + BATCH_ROWS]
            statement = sqlite.insert(forecast_predictions).values(batch)
            statement = statement.on_conflict_do_update(
                index_elements=list(KEYS), set_={c: statement.excluded[c] for c in COLUMNS if c not in KEYS}
            )
            conn.execute(statement)
        written += len(rows)
    return written
