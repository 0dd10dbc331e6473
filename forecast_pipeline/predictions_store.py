"""``forecast_predictions``: every weekly prediction as a row, for SQL consumers and job results.

Rows are UPSERTed by (as_of_date, product_id, week_start), so a rerun overwrites instead of
duplicating. PostgreSQL and SQLite both support ``INSERT ... ON CONFLICT DO UPDATE``.
"""

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from forecast_pipeline.jobs_schema import forecast_predictions

BATCH_ROWS = 5000


def create_table(engine: sa.Engine) -> None:
    forecast_predictions.create(engine, checkfirst=True)


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


def upsert(engine: sa.Engine, docs: Iterable[dict]) -> int:
    """Write the forecasts' weekly rows; returns how many rows were written."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(engine.dialect.name)
    if dialect is None:
        raise ValueError(f"forecast_predictions needs PostgreSQL or SQLite, not {engine.dialect.name}")
    rows = [row for doc in docs for row in rows_of(doc)]
    keys = {"as_of_date", "product_id", "week_start"}
    written = 0
    with engine.begin() as conn:
        for i in range(0, len(rows), BATCH_ROWS):
            batch = rows[i : i + BATCH_ROWS]
            statement = dialect.insert(forecast_predictions).values(batch)
            statement = statement.on_conflict_do_update(
                index_elements=sorted(keys),
                set_={c: statement.excluded[c] for c in batch[0] if c not in keys},
            )
            conn.execute(statement)
            written += len(batch)
    return written
