"""The forecast job queue becomes the forecast request queue ("job" also means a Dagster job).

``forecast_jobs`` -> ``forecast_requests`` (``job_type`` -> ``request_type``) and
``forecast_job_audit`` -> ``forecast_request_audit`` (``job_id`` -> ``request_id``), with their
indexes, constraints, sequences and the audit trigger, keeping every row. The old names stay as
compatibility views with the old column names, so systems that insert or read by SQL keep working:
on PostgreSQL the views are simple, hence insertable (the base table's defaults and audit trigger
apply) and carry the old tables' grants; SQLite views are read-only.

PostgreSQL renames in place (catalogue changes only, no rewrite); SQLite cannot rename an index or
a constraint, so there the tables are rebuilt under the new names and the rows copied.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
STATUSES = ("queued", "claimed", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("claimed", "running")

# every column, in table order: (new name, old name)
QUEUE_COLUMNS = [
    ("id", "id"),
    ("request_type", "job_type"),
    *(
        (c, c)
        for c in (
            "parameters",
            "priority",
            "status",
            "attempts",
            "max_attempts",
            "not_before",
            "concurrency_key",
            "idempotency_key",
            "run_key",
            "dagster_run_id",
            "created_at",
            "updated_at",
            "claimed_at",
            "started_at",
            "heartbeat_at",
            "cancel_requested_at",
            "finished_at",
            "duration_seconds",
            "error",
            "rows_written",
        )
    ),
]
AUDIT_COLUMNS = [("id", "id"), ("request_id", "job_id"), ("at", "at"), ("event", "event"), ("detail", "detail")]

NEW = {"queue": "forecast_requests", "audit": "forecast_request_audit", "type": "request_type", "ref": "request_id"}
OLD = {"queue": "forecast_jobs", "audit": "forecast_job_audit", "type": "job_type", "ref": "job_id"}


def _names(n: dict) -> dict:
    """Every named object of the two tables under one naming (``n``: NEW or OLD)."""
    q, a = n["queue"], n["audit"]
    return {
        "sequences": [f"{q}_id_seq", f"{a}_id_seq"],
        "constraints": [
            (q, f"{q}_pkey"),
            (q, f"ck_{q}_status"),
            (q, f"ck_{q}_max_attempts"),
            (a, f"{a}_pkey"),
        ],
        "indexes": [f"ix_{q}_due", f"ux_{q}_active_key", f"ux_{q}_idempotency_key", f"ix_{a}_{n['ref']}"],
        "trigger": f"{q}_queued_audit",
        "function": f"{q}_audit_queued",
    }


def trigger_sql(n: dict) -> str:
    q, a = n["queue"], n["audit"]
    return f"""
CREATE OR REPLACE FUNCTION {q}_audit_queued() RETURNS trigger AS $$
BEGIN
  INSERT INTO {a} ({n["ref"]}, at, event, detail)
  VALUES (NEW.id, now(), 'queued', json_build_object('parameters', NEW.parameters, 'priority', NEW.priority));
  RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS {q}_queued_audit ON {q};
CREATE TRIGGER {q}_queued_audit AFTER INSERT ON {q}
  FOR EACH ROW EXECUTE FUNCTION {q}_audit_queued();
"""


def _pairs(columns: list[tuple[str, str]], new_to_old: bool) -> list[tuple[str, str]]:
    """(column of the table, column of the view) pairs."""
    return [(new, old) if new_to_old else (old, new) for new, old in columns]


def _drop_views(conn: sa.Connection, n: dict) -> None:
    for name in (n["queue"], n["audit"]):
        if name in sa.inspect(conn).get_view_names():
            conn.exec_driver_sql(f"DROP VIEW {name}")


def _create_views(conn: sa.Connection, to: dict, view: dict) -> None:
    """Views named like ``view``'s tables, over ``to``'s tables, with ``view``'s column names."""
    new_to_old = to is NEW
    for kind, columns in (("queue", QUEUE_COLUMNS), ("audit", AUDIT_COLUMNS)):
        select = ", ".join(
            f"{table_col} AS {view_col}" if table_col != view_col else table_col
            for table_col, view_col in _pairs(columns, new_to_old)
        )
        conn.exec_driver_sql(f"CREATE VIEW {view[kind]} AS SELECT {select} FROM {to[kind]}")
        if conn.dialect.name == "postgresql":
            _copy_grants(conn, to[kind], view[kind])


def _copy_grants(conn: sa.Connection, table: str, view: str) -> None:
    """The table's grants (it kept the old table's when renamed) on the view as well, so a role
    that wrote the old table by SQL may write the view."""
    grants = conn.execute(
        sa.text(
            "SELECT a.grantee = 0, pg_get_userbyid(a.grantee), a.privilege_type "
            "FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.oid = CAST(:table AS regclass) AND a.grantee <> c.relowner "
            "AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')"
        ),
        {"table": table},
    ).all()
    for public, grantee, privilege in grants:
        role = "PUBLIC" if public else '"' + grantee.replace('"', '""') + '"'
        conn.exec_driver_sql(f"GRANT {privilege} ON {view} TO {role}")


def _rename_pg(conn: sa.Connection, src: dict, dst: dict) -> None:
    """Rename the tables and every named object in place (ids, rows and grants stay)."""
    before, after = _names(src), _names(dst)
    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {before['trigger']} ON {src['queue']}")
    conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {before['function']}()")
    conn.exec_driver_sql(f"ALTER TABLE {src['queue']} RENAME TO {dst['queue']}")
    conn.exec_driver_sql(f"ALTER TABLE {dst['queue']} RENAME COLUMN {src['type']} TO {dst['type']}")
    conn.exec_driver_sql(f"ALTER TABLE {src['audit']} RENAME TO {dst['audit']}")
    conn.exec_driver_sql(f"ALTER TABLE {dst['audit']} RENAME COLUMN {src['ref']} TO {dst['ref']}")
    for old, new in zip(before["sequences"], after["sequences"], strict=True):
        conn.exec_driver_sql(f"ALTER SEQUENCE IF EXISTS {old} RENAME TO {new}")
    present = {
        name
        for (name,) in conn.execute(
            sa.text("SELECT conname FROM pg_constraint WHERE conrelid IN (CAST(:q AS regclass), CAST(:a AS regclass))"),
            {"q": dst["queue"], "a": dst["audit"]},
        )
    }
    kinds = {src["queue"]: dst["queue"], src["audit"]: dst["audit"]}
    for (table, old), (_, new) in zip(before["constraints"], after["constraints"], strict=True):
        if old in present:  # renaming a primary key renames its index too
            conn.exec_driver_sql(f"ALTER TABLE {kinds[table]} RENAME CONSTRAINT {old} TO {new}")
    for old, new in zip(before["indexes"], after["indexes"], strict=True):
        conn.exec_driver_sql(f"ALTER INDEX IF EXISTS {old} RENAME TO {new}")
    conn.exec_driver_sql(trigger_sql(dst))


def _tables(n: dict) -> list[sa.Table]:
    """The two tables under ``n``'s names, as of this revision (written out: the live table
    modules move on with later revisions)."""
    m = sa.MetaData()
    q, a = n["queue"], n["audit"]
    now = sa.func.now
    active = f"status IN {ACTIVE_STATUSES} AND concurrency_key IS NOT NULL"
    queue = sa.Table(
        q,
        m,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column(n["type"], sa.String(40), nullable=False, server_default="forecast"),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("concurrency_key", sa.String(200)),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("run_key", sa.String(200)),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("rows_written", sa.Integer),
        sa.CheckConstraint(f"status IN {STATUSES}", name=f"ck_{q}_status"),
        sa.CheckConstraint("max_attempts >= 1", name=f"ck_{q}_max_attempts"),
        sa.Index(f"ix_{q}_due", "status", sa.text("priority DESC"), "created_at"),
        sa.Index(f"ux_{q}_active_key", "concurrency_key", unique=True, sqlite_where=sa.text(active)),
        sa.Index(
            f"ux_{q}_idempotency_key",
            "idempotency_key",
            unique=True,
            sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        ),
    )
    audit = sa.Table(
        a,
        m,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column(n["ref"], sa.BigInteger, nullable=False, index=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=now()),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("detail", sa.JSON),
    )
    return [queue, audit]


def _rebuild_sqlite(conn: sa.Connection, src: dict, dst: dict) -> None:
    """Create the tables under the new names, copy every row (ids included), drop the old ones."""
    new_to_old = dst is NEW
    for table, columns in zip(_tables(dst), (QUEUE_COLUMNS, AUDIT_COLUMNS), strict=True):
        table.create(conn)
        kind = "queue" if table.name == dst["queue"] else "audit"
        pairs = _pairs(columns, not new_to_old)  # (column of src, column of dst)
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(d for _, d in pairs)}) "
            f"SELECT {', '.join(s for s, _ in pairs)} FROM {src[kind]}"
        )
        conn.exec_driver_sql(f"DROP TABLE {src[kind]}")


def upgrade() -> None:
    conn = op.get_bind()
    _move(conn, OLD, NEW)
    _create_views(conn, NEW, OLD)


def downgrade() -> None:
    """Back to ``forecast_jobs`` and ``forecast_job_audit``, rows kept (the views go first)."""
    conn = op.get_bind()
    _drop_views(conn, OLD)
    _move(conn, NEW, OLD)


def _move(conn: sa.Connection, src: dict, dst: dict) -> None:
    if conn.dialect.name == "postgresql":
        _rename_pg(conn, src, dst)
    else:
        _rebuild_sqlite(conn, src, dst)
