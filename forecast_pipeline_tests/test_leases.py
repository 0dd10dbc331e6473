"""The lease helper (claim, heartbeat, release, expiry) on real PostgreSQL, with a table of its own."""

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from forecast_pipeline.app_db import leases

metadata = sa.MetaData()
items = sa.Table(
    "lease_test_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
    sa.Column("owner", sa.String(40)),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("group_key", sa.String(20)),
    # at most one running row per group: the unique index a claim can run into
    sa.Index(
        "ux_lease_test_running_group",
        "group_key",
        unique=True,
        postgresql_where=sa.text("status = 'running' AND group_key IS NOT NULL"),
    ),
)
T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def table(postgres_engine):
    metadata.drop_all(postgres_engine)
    metadata.create_all(postgres_engine)
    yield postgres_engine
    metadata.drop_all(postgres_engine)


def add(engine, n, **values):
    with engine.begin() as conn:
        conn.execute(items.insert(), [dict(values) for _ in range(n)])


def queued(now=None):
    """Queued rows, or running ones whose lease ended (with ``now``), highest priority then oldest."""
    due = items.c.status == "queued"
    if now is not None:
        due = sa.or_(due, sa.and_(items.c.status == "running", leases.lease_free(items.c.lease_until, now)))
    return sa.select(items).where(due).order_by(items.c.priority.desc(), items.c.id)


def take_for(owner, now=T0, seconds=30):
    return {"status": "running", "owner": owner, "lease_until": now + dt.timedelta(seconds=seconds)}


def test_a_claim_marks_the_rows_in_priority_order_and_a_concurrent_claim_skips_them_without_waiting(table):
    add(table, 6)
    with table.begin() as conn:
        conn.execute(items.update().where(items.c.id.in_([5, 6])).values(priority=9))
    first, second = table.connect(), table.connect()
    try:
        with first.begin():
            mine = leases.claim(first, queued().limit(3), table=items, values=take_for("a"))
            assert [r.id for r in mine] == [5, 6, 1]
            # the first transaction is still open and holds its rows: the second neither waits nor gets them
            with second.begin():
                second.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
                theirs = leases.claim(second, queued().limit(3), table=items, values=take_for("b"))
            assert [r.id for r in theirs] == [2, 3, 4]
    finally:
        first.close()
        second.close()
    with table.connect() as conn:
        owners = dict(conn.execute(sa.select(items.c.id, items.c.owner)).all())
    assert owners == {1: "a", 2: "b", 3: "b", 4: "b", 5: "a", 6: "a"}


def test_racing_claimers_never_claim_a_row_twice(table):
    add(table, 400)
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    start = threading.Barrier(len(claimed))
    errors = []

    def claimer(name):
        try:
            with table.connect() as conn:
                start.wait()
                while True:
                    with conn.begin():
                        batch = leases.claim(conn, queued().limit(7), table=items, values=take_for(name))
                    if not batch:
                        return
                    claimed[name] += [r.id for r in batch]
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    every = [i for ids in claimed.values() for i in ids]
    assert sorted(every) == list(range(1, 401))  # each row once, none lost
    with table.connect() as conn:
        owners = dict(conn.execute(sa.select(items.c.id, items.c.owner)).all())
    assert all(owners[i] == name for name, ids in claimed.items() for i in ids)


def test_an_expired_lease_is_claimed_again_a_live_one_is_not(table):
    add(table, 2)
    with table.begin() as conn:
        (one, two) = leases.claim(conn, queued(T0), table=items, values=take_for("a", T0, seconds=30))
    with table.begin() as conn:  # within the lease: nothing to claim
        assert leases.claim(conn, queued(T0 + dt.timedelta(seconds=29)), table=items, values=take_for("b")) == []
    with table.begin() as conn:  # "a" renews one lease only, then both would have ended at T0+30
        assert leases.extend(
            conn, items, (items.c.id == one.id, items.c.owner == "a"), lease_until=T0 + dt.timedelta(seconds=90)
        )
        assert not leases.extend(conn, items, (items.c.id == two.id, items.c.owner == "x"), lease_until=None)
    later = T0 + dt.timedelta(seconds=31)
    with table.begin() as conn:
        recovered = leases.claim(conn, queued(later), table=items, values=take_for("b", later))
    assert [r.id for r in recovered] == [two.id]
    assert recovered[0].owner == "a"  # the row as it was: the caller sees whose lease it took over


def test_expired_lists_rows_whose_heartbeat_stopped(table):
    add(table, 3)
    with table.begin() as conn:
        leases.claim(conn, queued(), table=items, values={"status": "running", "heartbeat_at": sa.func.now()})
        # row 3's holder went silent ten minutes ago
        conn.execute(
            items.update().where(items.c.id == 3).values(heartbeat_at=sa.func.now() - sa.text("interval '10 minutes'"))
        )
    running = sa.select(items).where(items.c.status == "running").order_by(items.c.id)
    with table.begin() as conn:
        assert [r.id for r in leases.expired(conn, running, items.c.heartbeat_at, 60)] == [3]
        assert leases.extend(conn, items, (items.c.id == 3, items.c.status == "running"), heartbeat_at=sa.func.now())
        assert leases.expired(conn, running, items.c.heartbeat_at, 60) == []
        # the holder is done: its heartbeat is cleared and the row handed back
        assert leases.release(conn, items, (items.c.id == 3,), status="queued", heartbeat_at=None)
        far = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        assert [r.id for r in leases.expired(conn, running, items.c.heartbeat_at, 60, now=far)] == [1, 2]


def test_take_passes_rows_over_and_a_refused_row_does_not_undo_the_others(table):
    add(table, 1, group_key="g")
    add(table, 1, group_key="g")
    add(table, 3)
    with table.begin() as conn:  # a writer outside the claim already runs group g
        conn.execute(items.insert().values(id=100, status="running", group_key="g"))
    refused = []

    def take(conn, row):
        if row.id == 4:
            return None  # passed over: stays queued
        return {"status": "running", "owner": "t"}

    with table.begin() as conn:
        got = leases.claim(
            conn, queued(), table=items, take=take, limit=2, on_skip=lambda row, exc: refused.append(row.id)
        )
    assert [r.id for r in got] == [3, 5]
    assert refused == [1, 2]  # the unique index refused both group g rows; nothing else was lost
    with table.connect() as conn:
        status = dict(conn.execute(sa.select(items.c.id, items.c.status)).all())
    assert status == {1: "queued", 2: "queued", 3: "running", 4: "queued", 5: "running", 100: "running"}


def test_claim_wants_values_or_take(table):
    with table.begin() as conn, pytest.raises(ValueError, match="either values or take"):
        leases.claim(conn, queued(), table=items)
