"""A realistic, deterministic order history for demos, tests and benchmarks.

Products follow one of nine patterns (smooth, seasonal, trending, intermittent, lumpy, new,
discontinued, erratic: regular orders of very uneven size, step: a lasting level shift of x0.3-0.6
or x1.8-3 at a random week of the last two years). Each product sells to its own pool of
customers; customers join at some date and many churn later, after which their orders stop, so
demand reacts to churn the way a real book of customers does. Lines bought by one customer on one
day form one order. A small share of lines have no product (freight, services), as in the legacy
data. Same seed, same data.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from forecast_pipeline.source import source_schema

PATTERNS = ("smooth", "seasonal", "trending", "intermittent", "lumpy", "new", "discontinued", "erratic", "step")
PATTERN_SHARES = (0.25, 0.18, 0.10, 0.16, 0.09, 0.05, 0.05, 0.06, 0.06)
NULL_PRODUCT_SHARE = 0.005


@dataclass
class DemoHistory:
    customers: pd.DataFrame
    products: pd.DataFrame
    orders: pd.DataFrame
    order_items: pd.DataFrame


def generate(
    products: int = 300,
    customers: int = 400,
    start: dt.date = dt.date(2019, 1, 1),
    end: dt.date | None = None,
    seed: int = 7,
    lines_per_product_week: float = 0.6,
) -> DemoHistory:
    """Order history from ``start`` to ``end`` (inclusive). ``lines_per_product_week`` sets the
    average volume (0.6 gives ~2M lines for 10,000 products over seven years)."""
    end = end or dt.date.today()
    rng = np.random.default_rng(seed)
    n_days = (end - start).days + 1
    n_weeks = n_days // 7 + 1
    weeks = np.arange(n_weeks)

    pattern = rng.choice(len(PATTERNS), size=products, p=PATTERN_SHARES)
    base = rng.gamma(1.5, lines_per_product_week / 1.5 * 1.6, size=products)
    rate = np.repeat(base[:, None], n_weeks, axis=1)
    is_ = {name: pattern == i for i, name in enumerate(PATTERNS)}
    # seasonal: yearly sine with random amplitude and phase
    amp = rng.uniform(0.5, 0.95, products)[:, None]
    phase = rng.uniform(0, 52, products)[:, None]
    season = 1 + amp * np.sin(2 * np.pi * (weeks[None, :] + phase) / 52.18)
    rate = np.where(is_["seasonal"][:, None], rate * season, rate)
    # trending: exponential growth or decline of 10-50% a year
    growth = rng.choice([-1, 1], products) * rng.uniform(0.1, 0.5, products)
    trend = np.exp(np.log1p(growth)[:, None] * (weeks[None, :] - n_weeks) / 52.18)
    rate = np.where(is_["trending"][:, None], rate * trend, rate)
    # intermittent and lumpy: rare orders
    rate = np.where((is_["intermittent"] | is_["lumpy"])[:, None], rate * 0.25, rate)
    # new: launched in the last 5-150 weeks; discontinued: stopped 4-100 weeks ago
    launch = n_weeks - rng.integers(5, 150, products)
    rate = np.where(is_["new"][:, None] & (weeks[None, :] < launch[:, None]), 0.0, rate)
    stop = n_weeks - rng.integers(4, 100, products)
    rate = np.where(is_["discontinued"][:, None] & (weeks[None, :] >= stop[:, None]), 0.0, rate)
    # step: the level moves once, up or down, somewhere in the last two years, and stays
    shift_week = n_weeks - rng.integers(4, 104, products)
    factor = np.where(rng.random(products) < 0.5, rng.uniform(0.3, 0.6, products), rng.uniform(1.8, 3.0, products))
    rate = np.where(is_["step"][:, None] & (weeks[None, :] >= shift_week[:, None]), rate * factor[:, None], rate)

    counts = rng.poisson(rate)
    product_idx, week_idx = np.nonzero(counts)
    reps = counts[product_idx, week_idx]
    line_product = np.repeat(product_idx, reps)
    line_day = np.repeat(week_idx, reps) * 7 + rng.integers(0, 7, reps.sum())
    keep = line_day < n_days
    line_product, line_day = line_product[keep], line_day[keep]
    n_lines = len(line_product)

    # customers: join date, churn date (55% churn at some point), product pools
    join = rng.integers(-200, n_days - 30, customers).clip(0)
    churns = rng.random(customers) < 0.55
    churn_day = np.where(churns, join + rng.integers(60, 1500, customers), n_days + 1)
    pool_size = np.clip(rng.zipf(1.6, products) + 3, 4, max(4, min(80, customers)))
    pool_start = np.concatenate([[0], np.cumsum(pool_size)[:-1]])
    pool_flat = rng.integers(0, customers, pool_size.sum())
    pick = (rng.random(n_lines) * pool_size[line_product]).astype(np.int64)
    line_customer = pool_flat[pool_start[line_product] + pick]
    active = (line_day >= join[line_customer]) & (line_day < churn_day[line_customer])
    line_product, line_day, line_customer = line_product[active], line_day[active], line_customer[active]
    n_lines = len(line_product)

    # quantities: lumpy products buy in large, irregular amounts
    mean_size = rng.uniform(1, 12, products)
    qty = 1 + rng.poisson(mean_size[line_product] - 1 + 1e-9)
    lumpy = is_["lumpy"][line_product]
    qty = np.where(lumpy, np.ceil(rng.lognormal(np.log(mean_size[line_product] * 3), 1.0)), qty)
    erratic = is_["erratic"][line_product]
    qty = np.where(erratic, np.ceil(rng.lognormal(np.log(mean_size[line_product] * 2), 1.2)), qty)

    # a customer's lines on one day form one order
    order_key = line_customer.astype(np.int64) * (n_days + 1) + line_day
    order_codes, order_index = np.unique(order_key, return_inverse=True)
    order_customer = (order_codes // (n_days + 1)).astype(np.int64)
    order_day = (order_codes % (n_days + 1)).astype(np.int64)
    seconds = rng.integers(8 * 3600, 18 * 3600, len(order_codes))
    created = pd.Timestamp(start) + pd.to_timedelta(order_day, unit="D") + pd.to_timedelta(seconds, unit="s")

    product_id = line_product + 1
    product_col = pd.array(product_id, dtype="Int64")
    product_col[rng.random(n_lines) < NULL_PRODUCT_SHARE] = pd.NA
    return DemoHistory(
        customers=pd.DataFrame(
            {"id": np.arange(1, customers + 1), "name": [f"Customer {i}" for i in range(1, customers + 1)]}
        ),
        products=pd.DataFrame(
            {
                "id": np.arange(1, products + 1),
                "name": [f"{PATTERNS[p].title()} product {i}" for i, p in enumerate(pattern, start=1)],
            }
        ),
        orders=pd.DataFrame(
            {"id": np.arange(1, len(order_codes) + 1), "customer_id": order_customer + 1, "created_at": created}
        ),
        order_items=pd.DataFrame(
            {
                "id": np.arange(1, n_lines + 1),
                "order_id": order_index + 1,
                "product_id": product_col,
                "quantity": qty.astype(float),
            }
        ),
    )


LOAD_CHUNK_ROWS = 50_000
COPY_CHUNK_ROWS = 500_000


def load(engine: sa.Engine, history: DemoHistory, progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Replace the default tables' contents with ``history`` (creating the tables if needed);
    ``progress(rows_loaded, rows_total)`` is called after each chunk of rows.

    On PostgreSQL everything happens in one transaction: the tables are truncated, their foreign
    keys and secondary indexes dropped, the rows copied in with COPY, then the indexes rebuilt and
    the foreign keys re-added (each validated by one set-based check instead of a trigger per row,
    which made the load ~5x slower). Readers see the old rows or the new ones, never a mix, and
    the final schema keeps every constraint.
    """
    source_schema.create_schema(engine)
    tables = [
        ("customers", history.customers),
        ("products", history.products),
        ("orders", history.orders),
        ("order_items", history.order_items),
    ]
    total = sum(len(frame) for _, frame in tables)
    loaded = 0

    def advance(rows: int) -> None:
        nonlocal loaded
        loaded += rows
        if progress is not None:
            progress(loaded, total)

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            _load_postgres(conn, tables, advance)
        elif engine.dialect.name == "sqlite":
            _load_sqlite(conn, tables, advance)
        else:
            for name, _ in reversed(tables):
                conn.execute(source_schema.metadata.tables[name].delete())
            for name, frame in tables:
                table = source_schema.metadata.tables[name]
                for i in range(0, len(frame), LOAD_CHUNK_ROWS):
                    chunk = frame.iloc[i : i + LOAD_CHUNK_ROWS]
                    conn.execute(table.insert(), chunk.astype(object).where(chunk.notna(), None).to_dict("records"))
                    advance(len(chunk))
    return {name: len(frame) for name, frame in tables}


SQLITE_CHUNK_ROWS = 200_000


def _load_sqlite(conn: sa.Connection, tables: list[tuple[str, pd.DataFrame]], advance: Callable[[int], None]) -> None:
    """sqlite3's own executemany of plain tuples, with the secondary indexes dropped during the
    load and rebuilt after: ~5x faster than SQLAlchemy's insert of one dict per row (figures in
    benchmarks/RESULTS.md). Values are stored as SQLAlchemy stored them (datetimes as its
    ``YYYY-MM-DD HH:MM:SS.ffffff`` text). All of it in the caller's one transaction."""
    names = [name for name, _ in tables]
    for name in reversed(names):  # DML first: pysqlite opens the transaction at it, so the DDL below is in it
        conn.execute(source_schema.metadata.tables[name].delete())
    marks = ", ".join("?" for _ in names)
    indexes = conn.exec_driver_sql(
        f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN ({marks})",
        tuple(names),
    ).all()
    for index, _ in indexes:
        conn.exec_driver_sql(f'DROP INDEX "{index}"')
    cursor = conn.connection.dbapi_connection.cursor()
    for name, frame in tables:
        statement = f"INSERT INTO {name} ({', '.join(frame.columns)}) VALUES ({', '.join('?' for _ in frame.columns)})"
        for i in range(0, len(frame), SQLITE_CHUNK_ROWS):  # Python values for one chunk at a time
            chunk = frame.iloc[i : i + SQLITE_CHUNK_ROWS]
            cursor.executemany(statement, zip(*(_sqlite_values(chunk[c]) for c in frame.columns), strict=True))
            advance(len(chunk))
    cursor.close()
    for _, definition in indexes:
        conn.exec_driver_sql(definition)


def _sqlite_values(column: pd.Series) -> list:
    """A column as Python values sqlite3 binds directly (None for a missing one)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        text = np.datetime_as_string(column.to_numpy(dtype="datetime64[us]"), unit="us")
        return np.char.replace(text, "T", " ").tolist()
    if column.hasnans:
        return column.to_numpy(dtype=object, na_value=None).tolist()
    return column.to_numpy().tolist()


def _load_postgres(conn: sa.Connection, tables: list[tuple[str, pd.DataFrame]], advance: Callable[[int], None]) -> None:
    names = [name for name, _ in tables]
    foreign_keys = conn.execute(
        sa.text(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid::regclass::text = ANY(:names)"
        ),
        {"names": names},
    ).all()
    indexes = conn.execute(
        sa.text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i "
            "WHERE i.schemaname = current_schema() AND i.tablename = ANY(:names) AND NOT EXISTS ("
            "  SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname AND c.contype IN ('p', 'u'))"
        ),
        {"names": names},
    ).all()
    referenced_from_outside = conn.execute(
        sa.text(
            "SELECT 1 FROM pg_constraint WHERE contype = 'f' AND confrelid::regclass::text = ANY(:names) "
            "AND NOT conrelid::regclass::text = ANY(:names) LIMIT 1"
        ),
        {"names": names},
    ).first()
    for table, constraint, _ in foreign_keys:
        conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"')
    for index, _ in indexes:
        conn.exec_driver_sql(f'DROP INDEX "{index}"')
    if referenced_from_outside:  # TRUNCATE would refuse; DELETE lets the other table's keys decide
        for name in reversed(names):
            conn.exec_driver_sql(f"DELETE FROM {name}")
    else:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(names)}")
    for name, frame in tables:
        for i in range(0, len(frame), COPY_CHUNK_ROWS):
            _copy_postgres(conn, name, frame.iloc[i : i + COPY_CHUNK_ROWS])
            advance(min(COPY_CHUNK_ROWS, len(frame) - i))
    for _, definition in indexes:
        conn.exec_driver_sql(definition)
    for table, constraint, definition in foreign_keys:
        conn.exec_driver_sql(f'ALTER TABLE {table} ADD CONSTRAINT "{constraint}" {definition}')


def _copy_postgres(conn: sa.Connection, name: str, frame: pd.DataFrame) -> None:
    """COPY is ~20x faster than INSERT for millions of rows."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="\\N")
    buffer.seek(0)
    cursor = conn.connection.dbapi_connection.cursor()
    columns = ", ".join(frame.columns)
    cursor.copy_expert(f"COPY {name} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer)
