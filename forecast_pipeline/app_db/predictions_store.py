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
    products' rows). Returns how many rows were written. ``docs`` is consumed once, a few hundred
    at a time: a million forecasts (12 million rows) never sit in memory at once."""
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


def count(engine: sa.Engine, as_of: dt.date) -> int:
    """How many rows ``as_of`` has (after a run for some products: theirs and everyone else's)."""
    table = forecast_predictions
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).where(table.c.as_of_date == as_of)).scalar_one()


CHUNK_DOCS = 5000


def delete_before(engine: sa.Engine, before: dt.date) -> int:
    """Delete the rows of every as-of date before ``before`` (retention); returns how many. One
    date per transaction: turning retention on over a year of a large catalogue's dates must not
    be one statement of billions of rows."""
    table = forecast_predictions
    with engine.connect() as conn:
        dates = conn.execute(sa.select(table.c.as_of_date).distinct().where(table.c.as_of_date < before)).scalars()
        dates = sorted(dates)
    removed = 0
    for as_of in dates:
        with engine.begin() as conn:
            removed += conn.execute(table.delete().where(table.c.as_of_date == as_of)).rowcount
    return removed


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
    """COPY the rows into the table after :func:`replace` deleted the ones they replace, as one
    statement fed :data:`DOCS_PER_READ` forecasts at a time: PostgreSQL parses and inserts the
    rows sent so far while the next ones are read and written here (the two overlap on two cores),
    and only one small piece is ever in memory. The CSV is written straight from the documents'
    strings and numbers (PostgreSQL parses the ISO dates and timestamps), not through a dict and
    date objects per row, which cost more than the COPY (benchmarks/RESULTS.md)."""
    cursor = conn.connection.dbapi_connection.cursor()
    statement = f"COPY forecast_predictions ({', '.join(COPY_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
    stream = _CsvStream(docs)
    cursor.copy_expert(statement, stream)
    if stream.error is not None:  # the caller's transaction rolls the rows back
        raise stream.error
    return stream.rows


DOCS_PER_READ = 250


class _CsvStream:
    """A file for ``copy_expert`` whose ``read()`` writes the CSV rows of the next
    :data:`DOCS_PER_READ` documents. An error while reading the documents (e.g. the date was
    published again meanwhile) ends the COPY and is kept in ``error`` for the caller to raise
    (the driver would replace it with its own)."""

    def __init__(self, docs: Iterable[dict]):
        self._docs = iter(docs)
        self.rows = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> str:
        if self.error is not None:
            return ""
        lines: list[str] = []
        try:
            for _, doc in zip(range(DOCS_PER_READ), self._docs, strict=False):
                meta = doc["model_metadata"]
                head = f"{_csv_text(doc['as_of_date'])},{int(doc['product_id'])},"
                tail = f",{_csv_text(meta['model_type'])},{_csv_text(meta['generated_at'])}\n"
                for week in doc["predictions"]:
                    lines.append(
                        f"{head}{_csv_text(week['week_start'])},{_csv_text(week['week_end'])},"
                        f"{float(week['predicted_quantity'])!r},{float(week['confidence_lower'])!r},"
                        f"{float(week['confidence_upper'])!r},{int(week['active_customers'])}{tail}"
                    )
        except Exception as exc:  # noqa: BLE001 - raised by _copy_postgres once the driver is done
            self.error = exc
            return ""
        self.rows += len(lines)
        return "".join(lines)


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
