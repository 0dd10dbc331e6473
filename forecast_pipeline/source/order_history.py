"""Reading order history in bulk: eligibility, weekly quantities and customer activity.

There are no per-product or per-customer round trips, which is what made the legacy worker slow.
On PostgreSQL with psycopg2 the lines are copied out in bulk (binary COPY) and aggregated in numpy
(see "the bulk read" below); elsewhere everything is aggregated in the database with one grouped
query each (``sql_*``, also the reference the bulk read is tested against). Queries run over an
``order_lines`` relation with the columns ``order_id, customer_id, product_id, ordered_at,
quantity``: by default a join of ``order_items`` and ``orders``, or the user's own
``FORECAST_SOURCE_QUERY``.

Weeks are 7-day periods anchored at the as-of date: week ``-1`` is the 7 days ending the day
before it, the first forecast week starts on it. Orders on or after the as-of date are never read.

Ids (product, customer, order) are read as Python ints and kept in int64 arrays: they are exact
over the whole signed 64-bit range (a float64 round trip merges neighbours above 2**53).

Rules for lines that are not plain sales, applied per line (in SQL, or in numpy by the bulk read)
and counted per product (:class:`LineQuality`): a line without a customer is demand but no
customer; a line whose quantity is unknown (NULL, NaN, infinite, or not a number) is left out of
demand; a negative quantity is a return and nets against the week's sales, and a week whose net is
negative counts as zero demand; a zero quantity is an order with no demand.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from forecast_pipeline.source import pg_copy, source_schema


class weeks_before(FunctionElement):
    """Whole 7-day weeks between a timestamp's date and the as-of date: 0 for the 7 days just
    before it. Rendered per dialect, since date arithmetic is not portable SQL."""

    type = sa.Integer()
    inherit_cache = True
    name = "weeks_before"


@compiles(weeks_before, "postgresql")
def _weeks_before_pg(element, compiler, **kw):
    ts, as_of = (compiler.process(c, **kw) for c in element.clauses)
    return f"((CAST({as_of} AS DATE) - CAST({ts} AS DATE) - 1) / 7)"


@compiles(weeks_before, "sqlite")
def _weeks_before_sqlite(element, compiler, **kw):
    ts, as_of = (compiler.process(c, **kw) for c in element.clauses)
    # the day as written (the window compares the text): date() alone would move text with a UTC
    # offset to its UTC day
    return f"((CAST(julianday(date({as_of})) - julianday(date(substr({ts}, 1, 10))) AS INTEGER) - 1) / 7)"


@compiles(weeks_before, "mysql")
@compiles(weeks_before, "mariadb")
def _weeks_before_mysql(element, compiler, **kw):
    ts, as_of = (compiler.process(c, **kw) for c in element.clauses)
    return f"((DATEDIFF({as_of}, {ts}) - 1) DIV 7)"


@compiles(weeks_before, "mssql")
def _weeks_before_mssql(element, compiler, **kw):
    ts, as_of = (compiler.process(c, **kw) for c in element.clauses)
    return f"((DATEDIFF(day, {ts}, {as_of}) - 1) / 7)"


@compiles(weeks_before)
def _weeks_before_other(element, compiler, **kw):
    raise sa.exc.CompileError(
        f"forecast_pipeline has no week arithmetic for the {compiler.dialect.name!r} dialect "
        "(supported: postgresql, sqlite, mysql, mariadb, mssql)"
    )


class known_quantity(FunctionElement):
    """True when a line's quantity is a finite number. NULL, NaN, infinities and (on SQLite, which
    stores whatever it is given) text are unknown quantities."""

    type = sa.Boolean()
    inherit_cache = True
    name = "known_quantity"


@compiles(known_quantity, "postgresql")
def _known_quantity_pg(element, compiler, **kw):
    (q,) = (compiler.process(c, **kw) for c in element.clauses)
    # NaN sorts above every number, so it fails the upper bound too; NULL is false, not NULL (a
    # NULL here made NOT(known AND ...) NULL too, which dropped the line)
    number = f"CAST({q} AS DOUBLE PRECISION)"
    bounded = f"{number} > CAST('-Infinity' AS DOUBLE PRECISION) AND {number} < CAST('Infinity' AS DOUBLE PRECISION)"
    return f"COALESCE(({bounded}), FALSE)"


@compiles(known_quantity, "sqlite")
def _known_quantity_sqlite(element, compiler, **kw):
    (q,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"(typeof({q}) IN ('integer', 'real') AND {q} > -9e999 AND {q} < 9e999)"


@compiles(known_quantity)
def _known_quantity_other(element, compiler, **kw):
    (q,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"({q} IS NOT NULL)"


QUALITY_KINDS = (
    "lines_without_customer",
    "lines_unknown_quantity",
    "return_lines",
    "zero_quantity_lines",
    "weeks_floored_at_zero",
)
LINE_KINDS = QUALITY_KINDS[:4]  # counted per line in SQL, in the query's column order
# A week whose net is within this share of its lines' absolute sum is zero (float rounding, not demand).
NET_ZERO_TOLERANCE = 1e-12


@dataclass
class LineQuality:
    """Per product (aligned with the product ids read), how many lines or weeks each rule in the
    module docstring applied to."""

    counts: dict[str, np.ndarray]

    @classmethod
    def empty(cls, n: int) -> LineQuality:
        return cls({kind: np.zeros(n, dtype=np.int64) for kind in QUALITY_KINDS})

    def summary(self) -> dict[str, int]:
        return {kind: int(self.counts[kind].sum()) for kind in QUALITY_KINDS}

    def examples(self, product_ids: Sequence[int], limit: int = 5) -> dict[str, list[int]]:
        """A few product ids per kind that occurred, most affected first."""
        found = {}
        for kind in QUALITY_KINDS:
            counts = self.counts[kind]
            rows = np.flatnonzero(counts)
            if len(rows):
                top = rows[np.argsort(-counts[rows], kind="stable")[:limit]]
                found[kind] = [int(product_ids[i]) for i in top]
        return found


@dataclass
class WeeklyHistory:
    """Net weekly demand (products x weeks, oldest week first) and what the line rules did."""

    matrix: np.ndarray
    quality: LineQuality


def order_lines(source_query: str | None = None) -> sa.Subquery:
    """The order-line relation every query reads: the default schema or the user's query."""
    if source_query:
        return (
            sa.text(source_query)
            .columns(
                sa.column("order_id", sa.BigInteger),
                sa.column("customer_id", sa.BigInteger),
                sa.column("product_id", sa.BigInteger),
                sa.column("ordered_at", sa.DateTime),
                sa.column("quantity", sa.Float),
            )
            .subquery("order_lines")
        )
    oi, o = source_schema.order_items, source_schema.orders
    return (
        sa.select(
            oi.c.order_id,
            o.c.customer_id,
            oi.c.product_id,
            o.c.created_at.label("ordered_at"),
            oi.c.quantity,
        )
        .join(o, oi.c.order_id == o.c.id)
        .subquery("order_lines")
    )


@dataclass(frozen=True)
class HistoryWindow:
    """What one as-of date reads: eligibility thresholds and the weekly window."""

    as_of: dt.date
    history_start: dt.date
    min_customers: int
    min_orders: int

    @property
    def weeks(self) -> int:
        """Full weeks between the history start and the as-of date (a partial oldest week is
        dropped so that every bucket holds 7 days)."""
        return max((self.as_of - self.history_start).days // 7, 0)

    @property
    def as_of_ts(self) -> dt.datetime:
        return dt.datetime.combine(self.as_of, dt.time())

    @property
    def window_start_ts(self) -> dt.datetime:
        return self.as_of_ts - dt.timedelta(days=7 * self.weeks)

    @property
    def history_start_ts(self) -> dt.datetime:
        """The first moment read for customer activity: the partial oldest week's orders are
        orders before the as-of date too (they count for eligibility and active customers)."""
        return dt.datetime.combine(self.history_start, dt.time())


class _DayStart(sa.types.TypeDecorator):
    """A window bound compared with ``ordered_at``: the first moment of a day (see :func:`_since`)."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        return dialect.type_descriptor(sa.String() if dialect.name == "sqlite" else sa.DateTime())

    def process_bind_param(self, value, dialect):
        return value.date().isoformat() if dialect.name == "sqlite" and value is not None else value


def _since(day: dt.date) -> sa.BindParameter:
    """The bound of ``ordered_at >= day`` and ``ordered_at < day``: midnight of ``day``.

    SQLite has no datetime type and compares the text other tools stored. SQLAlchemy's own
    '2025-11-10 00:00:00.000000' sorts above '2025-11-10 00:00:00' (Python's sqlite3) and
    '2025-11-10' (a DATE column, a CSV import), so those forms of the day were read as if before
    it. The date alone sorts at or below every form of its day (seconds, microseconds, a 'T') and
    above every form of the day before, so SQLite compares with it; elsewhere it is the timestamp."""
    return sa.bindparam("ordered_at", dt.datetime.combine(day, dt.time()), type_=_DayStart(), unique=True)


def _eligible_select(lines: sa.Subquery, window: HistoryWindow) -> sa.Select:
    # an order counts only with a customer, as the legacy query's INNER JOIN on ClientAgreement
    order_count = sa.func.count(sa.distinct(sa.case((lines.c.customer_id.is_not(None), lines.c.order_id))))
    customer_count = sa.func.count(sa.distinct(lines.c.customer_id))
    return (
        sa.select(
            lines.c.product_id,
            order_count.label("order_count"),
            customer_count.label("customer_count"),
        )
        .where(
            lines.c.ordered_at >= _since(window.history_start),
            lines.c.ordered_at < _since(window.as_of),
            lines.c.product_id.is_not(None),
        )
        .group_by(lines.c.product_id)
        .having(customer_count >= window.min_customers)
        .having(order_count >= window.min_orders)
    )


def why_not_eligible(
    conn: sa.Connection, window: HistoryWindow, product_ids: Collection[int], source_query: str | None = None
) -> dict[int, str]:
    """Why each of ``product_ids`` is not eligible for the window's as-of date, e.g. ``{6: "1
    customer, 2 orders", 9: "no orders"}`` ({} when all are): the eligibility query itself (its
    window and NULL rules, thresholds compared here to keep the counts) over these products' lines
    only (index ``order_items(product_id)``), never the whole catalogue."""
    lines = order_lines(source_query)
    counting = dataclasses.replace(window, min_customers=0, min_orders=0)
    ids, counts = sorted(set(product_ids)), {}
    for start in range(0, len(ids), 1000):  # under every driver's limit of bound parameters
        chunk = sa.bindparam("ids", ids[start : start + 1000], expanding=True)
        query = _eligible_select(lines, counting).where(lines.c.product_id.in_(chunk))
        counts.update({int(p): (int(o), int(c)) for p, o, c in conn.execute(query)})
    reasons = {pid: "no orders" for pid in ids if pid not in counts}
    for pid, (orders, customers) in counts.items():
        if customers < window.min_customers or orders < window.min_orders:
            reasons[pid] = f"{customers} customer{'s' * (customers != 1)}, {orders} order{'s' * (orders != 1)}"
    return dict(sorted(reasons.items()))


def eligibility_rule(window: HistoryWindow) -> str:
    """What a product needs to be eligible for the window's as-of date, in the settings' names."""
    return (
        f"FORECAST_MIN_CUSTOMERS={window.min_customers} customers and FORECAST_MIN_ORDERS={window.min_orders} "
        f"orders from {window.history_start} to {window.as_of - dt.timedelta(days=1)}"
    )


def fetch_eligible_products(
    conn: sa.Connection, window: HistoryWindow, source_query: str | None = None
) -> pd.DataFrame:
    """Eligible products with their order and customer counts, most orders first.

    With the bulk read a large catalogue is read in parts of about :data:`ELIGIBLE_PART_LINES`
    lines (every product in one part, by its id modulo the number of parts), so the step's
    memory stays bounded however many products there are."""
    if pg_copy.supported(conn):
        since = window.history_start_ts
        parts = max(1, math.ceil(_estimated_lines(conn, source_query) / ELIGIBLE_PART_LINES))
        if parts == 1:
            return _eligible_from_lines(_read_lines(conn, since, window, None, source_query, quantities=False), window)
        frames = [
            _eligible_from_lines(
                _read_lines(conn, since, window, None, source_query, quantities=False, part=(i, parts)), window
            )
            for i in range(parts)
        ]
        frame = pd.concat(frames, ignore_index=True)
        frame = frame.sort_values(["order_count", "product_id"], ascending=[False, True], kind="stable")
        return frame.reset_index(drop=True).astype("int64")
    return sql_eligible_products(conn, window, source_query)


ELIGIBLE_PART_LINES = 5_000_000
"""Most order lines (the planner's estimate) the eligibility read copies at once: a part of
~5M lines peaks at ~0.5 GB in the step's process (benchmarks/RESULTS.md, 1,000,000 products).
More parts cost PostgreSQL one scan of the lines each."""


def _estimated_lines(conn: sa.Connection, source_query: str | None) -> float:
    """The planner's estimate of the order lines (EXPLAIN: no scan)."""
    if source_query is None:
        return _estimated_items(conn)
    return _planned_rows(conn, pg_copy.render(conn, sa.select(sa.literal(1)).select_from(order_lines(source_query))))


def _in_part(product_id: ColumnElement, part: tuple[int, int]) -> ColumnElement:
    """Whether a product falls in part ``part[0]`` of ``part[1]`` (negative ids too)."""
    index, parts = part
    return sa.func.abs(product_id % parts) == index


KEEP_LINES_LIMIT = 20_000_000
"""Most order lines (the planner's estimate) the eligibility read keeps for the history read:
~41 bytes a line in memory, 20M lines ~0.8 GB, the memory a one-shard date needs anyway."""


def fetch_eligible_keeping_lines(
    conn: sa.Connection, window: HistoryWindow, max_products: int
) -> tuple[pd.DataFrame, OrderLines | None]:
    """:func:`fetch_eligible_products`, and the lines it read (with quantities) when the date can
    be forecast from them: the default tables, at most ``max_products`` eligible products (one
    shard) and a planner estimate of at most :data:`KEEP_LINES_LIMIT` lines. Otherwise (or where
    bulk COPY is unavailable) the lines are None and the history read queries the database itself.
    """
    if not pg_copy.supported(conn) or not window.weeks or _estimated_items(conn) > KEEP_LINES_LIMIT:
        return fetch_eligible_products(conn, window), None
    since = window.history_start_ts
    conn.exec_driver_sql(f"SET LOCAL work_mem = '{POSTGRES_WORK_MEM}'")
    lines = _read_default_schema(conn, since, window, None, quantities=True)
    if lines is None:  # orders.id not unique: the general read, which keeps nothing
        return fetch_eligible_products(conn, window), None
    eligible = _eligible_from_lines(lines, window)
    if len(eligible) > max_products:
        return eligible, None
    return eligible, OrderLines(window, lines)


def _estimated_items(conn: sa.Connection) -> float:
    """The planner's estimate of the order_items rows."""
    return _planned_rows(conn, f"SELECT 1 FROM {source_schema.order_items.name}")


def _planned_rows(conn: sa.Connection, sql: str) -> float:
    """The planner's row estimate for ``sql`` (EXPLAIN: no scan, works unanalysed too).

    ``sql`` is final text (:func:`pg_copy.render` has quoted its values), so it goes to the
    cursor without parameters: psycopg2 would read a ``%`` of FORECAST_SOURCE_QUERY (a LIKE
    pattern, a modulo) as a placeholder of the empty parameter set and raise a TypeError."""
    explain = f"EXPLAIN (FORMAT JSON) {sql}"
    plan = conn.exec_driver_sql(explain, execution_options={"no_parameters": True}).scalar()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return float(plan[0]["Plan"]["Plan Rows"])


@dataclass(frozen=True)
class OrderLines:
    """A date's order lines since the history start, as the eligibility read copied them, for
    :func:`history_from_lines`.

    Why forecasting from them is consistent: they are the lines the history read would copy (the
    same tables, columns, window and NULL rules, restricted below to the shard's products),
    taken in one statement snapshot. Reading again would use a later snapshot, so lines committed
    in between (orders dated before the as-of date, written late) could reach the history but not
    the eligibility counts; with these lines both come from the same snapshot, as one transaction
    reading both would give. Lines on or after the as-of date are in neither.
    """

    window: HistoryWindow
    lines: _Lines


def history_from_lines(
    kept: OrderLines, window: HistoryWindow, product_ids: Sequence[int]
) -> tuple[WeeklyHistory, pd.DataFrame]:
    """:func:`fetch_history` of some products (at least one) from lines the eligibility read
    kept: the same results, without a query."""
    if kept.window != window or not product_ids:
        raise ValueError(f"lines kept for {kept.window} cannot serve {window} and {len(product_ids)} products")
    return _weekly_from_lines(kept.lines, window, product_ids), _activity_from_lines(kept.lines, product_ids)


def sql_eligible_products(conn: sa.Connection, window: HistoryWindow, source_query: str | None = None) -> pd.DataFrame:
    """:func:`fetch_eligible_products` as one grouped query (every database; the reference the
    bulk read is tested against)."""
    query = _eligible_select(order_lines(source_query), window)
    query = query.order_by(sa.desc("order_count"), query.selected_columns.product_id)
    rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["product_id", "order_count", "customer_count"])
    return frame.astype("int64")


POSTGRES_WORK_MEM = "256MB"
"""Sort memory for the grouped reads on PostgreSQL (the 4MB default spills millions of rows to disk)."""
SMALL_IN_LIST = 500


def _history_source(
    conn: sa.Connection, window: HistoryWindow, source_query: str | None, product_ids: Sequence[int] | None
) -> tuple[sa.Subquery, sa.FromClause, list[ColumnElement]]:
    """Order lines since the history start for ``product_ids`` (all eligible products if None):
    the weekly matrix keeps its whole weeks, customer activity also the partial oldest week.

    On PostgreSQL the ids travel as one array parameter (``= ANY(:ids)``), so the eligibility
    aggregate is not computed again; elsewhere the lines are joined to it.
    """
    lines = order_lines(source_query)
    conditions: list[ColumnElement] = [
        lines.c.ordered_at >= _since(window.history_start),
        lines.c.ordered_at < _since(window.as_of),
    ]
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{POSTGRES_WORK_MEM}'")
        if product_ids is not None:
            ids = sa.bindparam("ids", [int(i) for i in product_ids], type_=postgresql.ARRAY(sa.BigInteger))
            return lines, lines, [*conditions, lines.c.product_id == sa.any_(ids)]
    eligible = _eligible_select(lines, window).cte("eligible")
    if product_ids is not None and len(product_ids) <= SMALL_IN_LIST:
        conditions.append(lines.c.product_id.in_(sa.bindparam("ids", [int(i) for i in product_ids], expanding=True)))
    return lines, lines.join(eligible, lines.c.product_id == eligible.c.product_id), conditions


def fetch_history(
    conn: sa.Connection,
    window: HistoryWindow,
    product_ids: Sequence[int],
    source_query: str | None = None,
) -> tuple[WeeklyHistory, pd.DataFrame]:
    """:func:`fetch_weekly_history` and :func:`fetch_customer_activity` of these products from
    one read of their lines (on PostgreSQL with psycopg2; two grouped queries elsewhere)."""
    if pg_copy.supported(conn) and product_ids and window.weeks:
        lines = _read_lines(conn, window.history_start_ts, window, product_ids, source_query)
        return _weekly_from_lines(lines, window, product_ids), _activity_from_lines(lines, product_ids)
    return (
        fetch_weekly_history(conn, window, product_ids, source_query),
        fetch_customer_activity(conn, window, product_ids, source_query),
    )


def fetch_weekly_history(
    conn: sa.Connection,
    window: HistoryWindow,
    product_ids: Sequence[int],
    source_query: str | None = None,
) -> WeeklyHistory:
    """Net weekly demand of these eligible products, with the line rules of the module docstring
    applied and counted."""
    if pg_copy.supported(conn) and product_ids and window.weeks:
        lines = _read_lines(conn, window.window_start_ts, window, product_ids, source_query)
        return _weekly_from_lines(lines, window, product_ids)
    return sql_weekly_history(conn, window, product_ids, source_query)


def _cancelled_to_zero(matrix: np.ndarray, gross: np.ndarray) -> None:
    """Weeks whose sales and returns cancel are zero: summed in floating point, 0.1 + 0.2 - 0.3 is
    5.6e-17, which would be a week with demand (or, below zero, of returns over sales)."""
    matrix[np.abs(matrix) <= gross * NET_ZERO_TOLERANCE] = 0.0


def sql_weekly_history(
    conn: sa.Connection,
    window: HistoryWindow,
    product_ids: Sequence[int],
    source_query: str | None = None,
) -> WeeklyHistory:
    """:func:`fetch_weekly_history` as one grouped query (every database; the reference the bulk
    read is tested against)."""
    matrix = np.zeros((len(product_ids), window.weeks))
    quality = LineQuality.empty(len(product_ids))
    if not product_ids or window.weeks == 0:
        return WeeklyHistory(matrix, quality)
    lines, source, conditions = _history_source(conn, window, source_query, product_ids)
    week = weeks_before(lines.c.ordered_at, sa.literal(window.as_of.isoformat(), sa.String))
    quantity = lines.c.quantity
    known = known_quantity(quantity)

    def lines_where(condition) -> ColumnElement:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    query = (
        sa.select(
            lines.c.product_id,
            week.label("week_back"),
            sa.func.coalesce(sa.func.sum(sa.case((known, quantity), else_=None)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((known, sa.func.abs(quantity)), else_=None)), 0),
            lines_where(lines.c.customer_id.is_(None)),
            sa.func.sum(sa.case((known, 0), else_=1)),
            lines_where(sa.and_(known, quantity < 0)),
            lines_where(sa.and_(known, quantity == 0)),
        )
        .select_from(source)
        .where(*conditions)
        .group_by(lines.c.product_id, week)
    )
    product, week_back, net, gross, *line_counts = _fetch_columns(
        conn, query, [np.int64, np.int64, float, float] + [np.int64] * 4
    )
    row_index = pd.Index(product_ids).get_indexer(product)
    col_index = window.weeks - 1 - week_back
    keep = (row_index >= 0) & (col_index >= 0) & (col_index < window.weeks)
    rows, cols = row_index[keep], col_index[keep]
    matrix[rows, cols] = net[keep]
    gross_matrix = np.zeros_like(matrix)
    gross_matrix[rows, cols] = gross[keep]
    _cancelled_to_zero(matrix, gross_matrix)
    for kind, counts in zip(LINE_KINDS, line_counts, strict=True):
        np.add.at(quality.counts[kind], rows, counts[keep])
    negative = matrix < 0
    quality.counts["weeks_floored_at_zero"] = negative.sum(axis=1).astype(np.int64)
    matrix[negative] = 0.0
    return WeeklyHistory(matrix, quality)


def fetch_customer_activity(
    conn: sa.Connection,
    window: HistoryWindow,
    product_ids: Sequence[int] | None = None,
    source_query: str | None = None,
) -> pd.DataFrame:
    """Per (product, customer): distinct orders, distinct weeks with an order and the weeks since
    their first and last order, for these products (all eligible products if None)."""
    if pg_copy.supported(conn) and window.weeks and (product_ids is None or product_ids):
        if product_ids is None:
            product_ids = fetch_eligible_products(conn, window, source_query)["product_id"].tolist()
        if product_ids:
            lines = _read_lines(conn, window.history_start_ts, window, product_ids, source_query)
            return _activity_from_lines(lines, product_ids)
    return sql_customer_activity(conn, window, product_ids, source_query)


def _buying(quantity: ColumnElement) -> ColumnElement[bool]:
    """A line that is buying, for customer activity: not a return or a zero line (a known quantity
    at or below zero). A line of unknown quantity was still an order."""
    return sa.not_(sa.and_(known_quantity(quantity), quantity <= 0))


def sql_customer_activity(
    conn: sa.Connection,
    window: HistoryWindow,
    product_ids: Sequence[int] | None = None,
    source_query: str | None = None,
) -> pd.DataFrame:
    """:func:`fetch_customer_activity` as one grouped query (every database; the reference the
    bulk read is tested against)."""
    columns = ["product_id", "customer_id", "orders", "order_weeks", "first_week_back", "last_week_back"]
    if product_ids is not None and not product_ids:
        return pd.DataFrame(columns=columns, dtype="int64")
    lines, source, conditions = _history_source(conn, window, source_query, product_ids)
    week = weeks_before(lines.c.ordered_at, sa.literal(window.as_of.isoformat(), sa.String))
    query = (
        sa.select(
            lines.c.product_id,
            lines.c.customer_id,
            sa.func.count(sa.distinct(lines.c.order_id)).label("orders"),
            sa.func.count(sa.distinct(week)).label("order_weeks"),
            sa.func.max(week).label("first_week_back"),
            sa.func.min(week).label("last_week_back"),
        )
        .select_from(source)
        .where(*conditions, lines.c.customer_id.is_not(None), _buying(lines.c.quantity))
        .group_by(lines.c.product_id, lines.c.customer_id)
    )
    values = _fetch_columns(conn, query, [np.int64] * len(columns))
    return pd.DataFrame(dict(zip(columns, values, strict=True)))


def _fetch_columns(conn: sa.Connection, query: sa.Select, dtypes: Sequence[type]) -> list[np.ndarray]:
    """All rows of a query as one array per column. Ids go straight from Python ints to int64
    (never through float64, which is exact only up to 2**53). Reads the DBAPI cursor's plain
    tuples: building arrays from SQLAlchemy Row objects is far slower at a million rows."""
    rows = conn.execute(query).cursor.fetchall()
    if not rows:
        return [np.empty(0, dtype=dtype) for dtype in dtypes]
    return [
        np.fromiter(column, dtype=dtype, count=len(rows))
        for column, dtype in zip(zip(*rows, strict=True), dtypes, strict=True)
    ]


# --- the bulk read (PostgreSQL with psycopg2) ---------------------------------------------------
#
# The grouped queries above spent most of their time joining order_items to orders and grouping
# millions of rows in PostgreSQL, then building a Python tuple per group. The bulk read copies
# the lines' few columns out with binary COPY and applies the same rules in numpy. With the
# default schema the two tables are copied separately and joined here, which is several times
# faster than PostgreSQL's hash join of the same rows on this kind of machine (benchmarks/RESULTS.md).


@dataclass
class _Lines:
    """Order lines of one window, one array entry per line (no NULLs: flags say what was unknown)."""

    product_id: np.ndarray  # int64
    customer_id: np.ndarray  # int64, meaningless where not has_customer
    has_customer: np.ndarray  # bool
    order_code: np.ndarray  # int64: equal codes are the same order id; -1 for a line without one
    orders: int  # codes are below this
    days_back: np.ndarray  # int64: the as-of date minus the line's date, >= 1
    quantity: np.ndarray  # float64, NaN where the quantity is NULL


def _days_back(as_of: dt.date, ordered_at: ColumnElement) -> ColumnElement:
    as_of_date = sa.cast(sa.literal(as_of.isoformat(), sa.String), sa.Date)
    return sa.cast(as_of_date - sa.cast(ordered_at, sa.Date), sa.Integer)


def _float_or_nan(quantity: ColumnElement) -> ColumnElement:
    number = sa.cast(quantity, postgresql.DOUBLE_PRECISION)
    return sa.func.coalesce(number, sa.cast(sa.literal("NaN", sa.String), postgresql.DOUBLE_PRECISION))


def _ids_param(product_ids: Sequence[int]) -> sa.BindParameter:
    return sa.bindparam("ids", [int(i) for i in product_ids], type_=postgresql.ARRAY(sa.BigInteger))


def _read_lines(
    conn: sa.Connection,
    since: dt.datetime,
    window: HistoryWindow,
    product_ids: Sequence[int] | None,
    source_query: str | None,
    quantities: bool = True,
    part: tuple[int, int] | None = None,
) -> _Lines:
    """Lines with a product, ``since <= ordered_at < as-of``, of ``product_ids`` (all if None)
    and of part ``part[0]`` of ``part[1]`` of the products (see :func:`_in_part`) if given;
    without ``quantities`` (eligibility needs none) their quantity array is empty."""
    conn.exec_driver_sql(f"SET LOCAL work_mem = '{POSTGRES_WORK_MEM}'")
    if source_query is None:
        lines = _read_default_schema(conn, since, window, product_ids, quantities, part)
        if lines is not None:
            return lines
    lines_rel = order_lines(source_query)
    c = lines_rel.c
    conditions = [c.ordered_at >= since, c.ordered_at < window.as_of_ts, c.product_id.is_not(None)]
    if product_ids is not None:
        conditions.append(c.product_id == sa.any_(_ids_param(product_ids)))
    if part is not None:
        conditions.append(_in_part(c.product_id, part))
    query = sa.select(
        sa.cast(c.product_id, sa.BigInteger),
        sa.func.coalesce(sa.cast(c.customer_id, sa.BigInteger), 0),
        c.customer_id.is_not(None),
        sa.func.coalesce(sa.cast(c.order_id, sa.BigInteger), 0),
        c.order_id.is_not(None),
        _days_back(window.as_of, c.ordered_at),
        *([_float_or_nan(c.quantity)] if quantities else []),
    ).where(*conditions)
    kinds = ["int8", "int8", "bool", "int8", "bool", "int4"] + (["float8"] if quantities else [])
    product, customer, has_customer, order, has_order, days, *quantity = pg_copy.copy_columns(conn, query, kinds)
    quantity = quantity[0] if quantities else np.empty(0)
    codes, uniques = pd.factorize(order[has_order])
    order_code = np.full(len(order), -1, dtype=np.int64)
    order_code[has_order] = codes
    return _Lines(product, customer, has_customer, order_code, len(uniques), days.astype(np.int64), quantity)


def _read_default_schema(
    conn: sa.Connection,
    since: dt.datetime,
    window: HistoryWindow,
    product_ids: Sequence[int] | None,
    quantities: bool,
    part: tuple[int, int] | None = None,
) -> _Lines | None:
    """The default tables copied one by one and joined on the order id in numpy (None if
    ``orders.id`` is not unique, which only a table created outside ``init-db`` allows)."""
    o, oi = source_schema.orders, source_schema.order_items
    orders_query = sa.select(
        sa.cast(o.c.id, sa.BigInteger),
        sa.func.coalesce(sa.cast(o.c.customer_id, sa.BigInteger), 0),
        o.c.customer_id.is_not(None),
        _days_back(window.as_of, o.c.created_at),
    ).where(o.c.created_at >= since, o.c.created_at < window.as_of_ts)
    conditions = [oi.c.product_id.is_not(None), oi.c.order_id.is_not(None)]
    if product_ids is not None:
        conditions.append(oi.c.product_id == sa.any_(_ids_param(product_ids)))
    if part is not None:
        conditions.append(_in_part(oi.c.product_id, part))
    if product_ids is not None or part is not None:
        # only the orders holding one of these products' lines: a shard's memory (and what it
        # copies) then follows its own products, not the catalogue's orders
        orders_query = orders_query.where(o.c.id.in_(sa.select(oi.c.order_id).where(*conditions)))
    items_query = sa.select(
        sa.cast(oi.c.order_id, sa.BigInteger),
        sa.cast(oi.c.product_id, sa.BigInteger),
        *([_float_or_nan(oi.c.quantity)] if quantities else []),
    ).where(*conditions)
    item_kinds = ["int8", "int8"] + (["float8"] if quantities else [])
    (order_id, customer, has_customer, days), (item_order, product, *quantity) = pg_copy.copy_columns_together(
        conn, [(orders_query, ["int8", "int8", "bool", "int4"]), (items_query, item_kinds)], POSTGRES_WORK_MEM
    )
    position = _unique_positions(order_id)
    if position is None:
        return None
    at = position(item_order)
    found = at >= 0
    at = at[found]
    return _Lines(
        product[found],
        customer[at],
        has_customer[at],
        at,
        len(order_id),
        days[at].astype(np.int64),
        quantity[0][found] if quantities else np.empty(0),
    )


def _unique_positions(keys: np.ndarray):
    """A function mapping values to their index in ``keys`` (-1 when absent), or None when
    ``keys`` has duplicates. Dense ids (serial keys) use a lookup table, others a binary search."""
    n = len(keys)
    if n == 0:
        return lambda values: np.full(len(values), -1, dtype=np.int64)
    low, high = int(keys.min()), int(keys.max())
    span = high - low + 1
    if span <= 4 * n + 1024:
        table = np.full(span, -1, dtype=np.int64)
        offsets = keys - low
        table[offsets] = np.arange(n, dtype=np.int64)
        if np.count_nonzero(table >= 0) != n:
            return None

        def lookup(values: np.ndarray) -> np.ndarray:
            inside = (values >= low) & (values <= high)
            result = np.full(len(values), -1, dtype=np.int64)
            result[inside] = table[values[inside] - low]
            return result

        return lookup
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    if (ordered[1:] == ordered[:-1]).any():
        return None

    def search(values: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(ordered, values), n - 1)
        return np.where(ordered[at] == values, order[at], -1)

    return search


def _distinct_per_group(groups: np.ndarray, n_groups: int, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """How many distinct ``codes`` each group has (codes below 0 are not counted)."""
    known = codes >= 0
    n_codes = max(n_codes, 1)
    if n_groups * n_codes <= 8 * len(codes) + 1024:  # few pairs possible: mark them in a table
        seen = np.zeros(n_groups * n_codes, dtype=bool)
        seen[groups[known] * np.int64(n_codes) + codes[known]] = True
        return np.count_nonzero(seen.reshape(n_groups, n_codes), axis=1).astype(np.int64)
    pairs = np.sort(groups[known] * np.int64(n_codes) + codes[known])
    pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))] if len(pairs) else pairs
    return np.bincount(pairs // n_codes, minlength=n_groups).astype(np.int64)


def _eligible_from_lines(lines: _Lines, window: HistoryWindow) -> pd.DataFrame:
    product_code, products = pd.factorize(lines.product_id)
    n = len(products)
    order_code = np.where(lines.has_customer, lines.order_code, -1)  # see _eligible_select
    order_count = _distinct_per_group(product_code, n, order_code, lines.orders)
    customer_code = np.full(len(product_code), -1, dtype=np.int64)
    codes, customers = pd.factorize(lines.customer_id[lines.has_customer])
    customer_code[lines.has_customer] = codes
    customer_count = _distinct_per_group(product_code, n, customer_code, len(customers))
    frame = pd.DataFrame(
        {
            "product_id": np.asarray(products, dtype=np.int64),
            "order_count": order_count,
            "customer_count": customer_count,
        }
    )
    frame = frame[(frame["customer_count"] >= window.min_customers) & (frame["order_count"] >= window.min_orders)]
    frame = frame.sort_values(["order_count", "product_id"], ascending=[False, True], kind="stable")
    return frame.reset_index(drop=True).astype("int64")


def _weekly_from_lines(lines: _Lines, window: HistoryWindow, product_ids: Sequence[int]) -> WeeklyHistory:
    weeks = window.weeks
    n = len(product_ids)
    row = pd.Index(product_ids).get_indexer(lines.product_id)
    col = weeks - 1 - (lines.days_back - 1) // 7
    keep = (row >= 0) & (col >= 0) & (col < weeks)
    row, col, quantity = row[keep], col[keep], lines.quantity[keep]
    known = np.isfinite(quantity)
    net = np.where(known, quantity, 0.0)
    cell = row * weeks + col
    matrix = np.bincount(cell, weights=net, minlength=n * weeks).reshape(n, weeks)
    gross = np.bincount(cell, weights=np.abs(net), minlength=n * weeks).reshape(n, weeks)
    _cancelled_to_zero(matrix, gross)
    quality = LineQuality.empty(n)
    flags = {
        "lines_without_customer": ~lines.has_customer[keep],
        "lines_unknown_quantity": ~known,
        "return_lines": known & (net < 0),
        "zero_quantity_lines": known & (net == 0),
    }
    for kind, flag in flags.items():
        quality.counts[kind] = np.bincount(row[flag], minlength=n).astype(np.int64)
    negative = matrix < 0
    quality.counts["weeks_floored_at_zero"] = negative.sum(axis=1).astype(np.int64)
    matrix[negative] = 0.0
    return WeeklyHistory(matrix, quality)


def _activity_from_lines(lines: _Lines, product_ids: Sequence[int]) -> pd.DataFrame:
    row = pd.Index(product_ids).get_indexer(lines.product_id)
    returned = np.isfinite(lines.quantity) & (lines.quantity <= 0)  # see _buying
    keep = (row >= 0) & lines.has_customer & ~returned
    row, customer = row[keep], lines.customer_id[keep]
    week = (lines.days_back[keep] - 1) // 7
    customer_code, customers = pd.factorize(customer)
    pair_code, pairs = pd.factorize(row * np.int64(len(customers)) + customer_code)
    orders = _distinct_per_group(pair_code, len(pairs), lines.order_code[keep], lines.orders)
    order_weeks = _distinct_per_group(pair_code, len(pairs), week, int(week.max()) + 1 if len(week) else 0)
    weeks_back = pd.Series(week).groupby(pair_code).agg(["max", "min"])
    pairs = np.asarray(pairs, dtype=np.int64)
    n_customers = max(len(customers), 1)
    return pd.DataFrame(
        {
            "product_id": np.asarray(product_ids, dtype=np.int64)[pairs // n_customers],
            "customer_id": np.asarray(customers, dtype=np.int64)[pairs % n_customers],
            "orders": orders,
            "order_weeks": order_weeks,
            "first_week_back": weeks_back["max"].to_numpy(dtype=np.int64),
            "last_week_back": weeks_back["min"].to_numpy(dtype=np.int64),
        }
    )
