"""The demo history's SQLite load (raw sqlite3, indexes rebuilt after) stores exactly what
SQLAlchemy's row-by-row insert it replaced stored: same values, same SQLite types, same indexes."""

import datetime as dt
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from forecast_pipeline.source import demo_data, source_schema


def history(products: int, seed: int) -> demo_data.DemoHistory:
    return demo_data.generate(
        products=products, customers=60, start=dt.date(2023, 1, 1), end=dt.date(2024, 6, 30), seed=seed
    )


def reference_load(engine: sa.Engine, data: demo_data.DemoHistory) -> None:
    """The load as it was: SQLAlchemy executemany of one dict per row (~35 s per million rows)."""
    source_schema.create_schema(engine)
    frames = [data.customers, data.products, data.orders, data.order_items]
    with engine.begin() as conn:
        for name in reversed(source_schema.SOURCE_TABLES):
            conn.execute(source_schema.metadata.tables[name].delete())
        for name, frame in zip(source_schema.SOURCE_TABLES, frames, strict=True):
            rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
            conn.execute(source_schema.metadata.tables[name].insert(), rows)


def dump(path: Path) -> dict:
    """Every row with each value's SQLite type, and the schema (tables and indexes)."""
    with sqlite3.connect(path) as con:
        out = {"schema": sorted(con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall())}
        for name in source_schema.SOURCE_TABLES:
            columns = [row[1] for row in con.execute(f"PRAGMA table_info({name})")]
            values = ", ".join(f"{c}, typeof({c})" for c in columns)
            out[name] = con.execute(f"SELECT {values} FROM {name} ORDER BY id").fetchall()
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return out


def test_the_sqlite_load_stores_what_the_row_by_row_insert_stored(tmp_path):
    fast, slow = tmp_path / "fast.sqlite", tmp_path / "slow.sqlite"
    calls = []
    for data in (history(90, seed=1), history(40, seed=2)):  # the second load replaces the first
        counts = demo_data.load(
            sa.create_engine(f"sqlite:///{fast}"), data, progress=lambda done, total: calls.append((done, total))
        )
        reference_load(sa.create_engine(f"sqlite:///{slow}"), data)
    assert counts == {name: len(getattr(data, name)) for name in source_schema.SOURCE_TABLES}
    expected = dump(slow)
    assert expected["order_items"] and any(row[4] is None for row in expected["order_items"])  # null products
    assert dump(fast) == expected
    total = sum(counts.values())
    assert calls[-1] == (total, total)
