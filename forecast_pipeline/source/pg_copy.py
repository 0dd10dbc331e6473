"""Reading a PostgreSQL query in bulk: ``COPY (query) TO STDOUT (FORMAT binary)`` into numpy.

Fetching millions of rows through the DBAPI builds a Python tuple and objects per row, which cost
more than the query itself; binary COPY sends the same values packed, and a query whose columns
are all fixed-width and never NULL gives rows of one size, which numpy reads in place
(``np.frombuffer`` with a big-endian record type). Callers map NULLs to a value and a flag column.

Needs the psycopg2 driver (``copy_expert``); :func:`supported` says whether a connection has it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import sqlalchemy as sa

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
WIRE_TYPES = {"int8": ">i8", "int4": ">i4", "float8": ">f8", "bool": "|b1"}
"""Column kinds a bulk query may return, with their big-endian wire format."""


def supported(conn: sa.Connection) -> bool:
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2"


def render(conn: sa.Connection, query: sa.Select) -> str:
    """The query as one SQL string with its parameters quoted by the driver (COPY takes none)."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        return cursor.mogrify(str(compiled), compiled.params).decode()
    finally:
        cursor.close()


def copy_columns(conn: sa.Connection, query: sa.Select, kinds: Sequence[str]) -> list[np.ndarray]:
    """Every row of ``query`` as one native numpy array per column. ``kinds`` names each column's
    type (keys of :data:`WIRE_TYPES`); the query must cast its columns to exactly those types and
    never return NULL (a NULL, or a wrong type, changes the row size and raises ValueError)."""
    return parse(_copy_out(conn.connection.dbapi_connection, render(conn, query)), kinds)


def copy_columns_together(
    conn: sa.Connection, jobs: Sequence[tuple[sa.Select, Sequence[str]]], work_mem: str | None = None
) -> list[list[np.ndarray]]:
    """:func:`copy_columns` of several queries at once, each on its own connection from
    ``conn``'s engine, all in the snapshot of ``conn``'s open transaction (``pg_export_snapshot``):
    PostgreSQL produces a COPY's rows on one core, so two queries keep both cores of a small
    machine busy, and they see exactly the same rows, as one query would."""
    sqls = [render(conn, query) for query, _ in jobs]
    snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        streams = [pool.submit(_copy_in_snapshot, conn.engine, snapshot, sql, work_mem) for sql in sqls]
        return [parse(stream.result(), kinds) for stream, (_, kinds) in zip(streams, jobs, strict=True)]


def _copy_in_snapshot(engine: sa.Engine, snapshot: str, sql: str, work_mem: str | None) -> memoryview:
    raw = engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        dbapi.rollback()  # the pool's ping may have opened a transaction; the snapshot must come first
        dbapi.set_session(isolation_level="REPEATABLE READ", readonly=True)
        try:
            with dbapi.cursor() as cursor:
                cursor.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                if work_mem:
                    cursor.execute("SET LOCAL work_mem = %s", (work_mem,))
            return _copy_out(dbapi, sql)
        finally:
            dbapi.rollback()
            dbapi.set_session(isolation_level="DEFAULT", readonly="DEFAULT")
    finally:
        raw.close()


def _copy_out(dbapi_connection, sql: str) -> memoryview:
    """The COPY stream. A database error is raised as SQLAlchemy's (``sa.exc.ProgrammingError``
    for a missing table, ...), as any other query's, so callers need not know the driver."""
    import psycopg2

    statement = f"COPY ({sql}) TO STDOUT WITH (FORMAT binary)"
    sink = io.BytesIO()  # psycopg2 writes one row per call: one growing buffer, no object per row
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.copy_expert(statement, sink)
    except psycopg2.Error as exc:
        raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg2.Error) from exc
    return sink.getbuffer()


def parse(data: bytes | memoryview, kinds: Sequence[str]) -> list[np.ndarray]:
    """Decode a binary COPY stream whose rows are all non-NULL fixed-width ``kinds``."""
    data = memoryview(data)
    if bytes(data[: len(SIGNATURE)]) != SIGNATURE:
        raise ValueError("not a PostgreSQL binary COPY stream")
    extension = int.from_bytes(bytes(data[15:19]), "big")
    start, end = 19 + extension, len(data) - 2  # the trailer is a field count of -1
    fields = [("fields", ">i2")]
    for i, kind in enumerate(kinds):
        fields += [(f"size{i}", ">i4"), (f"value{i}", WIRE_TYPES[kind])]
    record = np.dtype(fields)
    body = data[start:end]
    if len(body) % record.itemsize:
        raise ValueError("binary COPY rows are not all of one size: a NULL or an unexpected column type")
    rows = np.frombuffer(body, dtype=record)
    if len(rows) and not (rows["fields"] == len(kinds)).all():
        raise ValueError(f"binary COPY rows do not all have {len(kinds)} columns")
    for i, kind in enumerate(kinds):
        width = np.dtype(WIRE_TYPES[kind]).itemsize
        if len(rows) and not (rows[f"size{i}"] == width).all():
            raise ValueError(f"binary COPY column {i} is NULL or not {kind} in some rows")
    return [rows[f"value{i}"].astype(np.dtype(WIRE_TYPES[kind]).newbyteorder("=")) for i, kind in enumerate(kinds)]
