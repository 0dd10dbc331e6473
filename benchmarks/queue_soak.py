"""Soak benchmark of the forecast request queue under the daemon, with random kills and poison rows.

Starts ``dagster-daemon`` with ``deploy/dagster.yaml`` (Postgres storage; two queue runs at once)
on fresh databases, queues ``--jobs`` valid single-date requests (random priorities, some sharing
concurrency keys) and ``--poison`` bad rows, SIGKILLs a random executing queue run every
``--kill-every`` seconds, and waits until every request is closed. Then it checks, from Dagster's run
records rather than the queue's own table:

- every valid request is ``succeeded`` and has exactly one successful run (requests still open when
  ``--max-minutes`` ran out are counted apart, as unfinished);
- no two runs of one request executed at the same time, and at most two queue runs executed at once;
- every poison row is ``failed`` with its reason and never had a run;

and prints the figures (wall time, requests per minute, kills, retried requests, queue latency) as JSON.

Usage (from the repository root)::

    .venv/bin/python benchmarks/queue_soak.py --jobs 500 --poison 5 --kill-every 30

Not a test: it takes tens of minutes. It only touches the databases named by ``--database-url``
and ``--storage-db`` (both dropped and recreated) and the ``soak`` key prefix in ``--redis-url``.
Only processes descended from the daemon it started are ever killed. Exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forecast_pipeline.app_db.queue_tables import forecast_requests  # noqa: E402
from forecast_pipeline.app_db.schema import upgrade_app_schema  # noqa: E402
from forecast_pipeline.connections import make_engine  # noqa: E402
from forecast_pipeline.forecast_queue import request_queue  # noqa: E402
from forecast_pipeline.source import demo_data  # noqa: E402

BIN = Path(sys.executable).parent
OWN_VARIABLES = ("FORECAST_", "REDIS_", "DATABASE_URL", "DAGSTER_")  # the soak sets its own
QUEUE_RUNS = {"dagster/sensor_name": "forecast_request_queue"}
POISON = [
    ({"as_of_date": "{today}", "product_ids": [True]}, "product_ids must be a non-empty list of integers"),
    ("{today}", "must be a JSON object, got a JSON string"),
    ({"as_of_date": "2031-02-30"}, "is not a YYYY-MM-DD date"),
    ({"as_of_date": "2014-01-01"}, "before the history start"),
    ({"from": "{today}", "to": "{yesterday}"}, "is after to"),
]


def recreate_database(server_url: str, name: str) -> str:
    admin = make_engine(f"{server_url}/postgres")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server_url}/{name}"


def descendants(root_pid: int) -> set[int]:
    """Every live process below ``root_pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {root_pid}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def run_pid(instance, run_id: str) -> int | None:
    from dagster import DagsterEventType

    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records:
        match = re.search(r"\(pid: (\d+)\)", record.event_log_entry.message or "")
        if match:
            return int(match.group(1))
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--poison", type=int, default=5)
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills (0: none)")
    parser.add_argument("--products", type=int, default=12)
    parser.add_argument("--max-minutes", type=float, default=90.0, help="give up after this long")
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="forecast_queue_soak", help="orders and application tables")
    parser.add_argument("--storage-db", default="forecast_queue_soak_storage", help="Dagster's storage")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    database_url = recreate_database(args.server_url, args.database)
    storage_url = recreate_database(args.server_url, args.storage_db)
    engine = make_engine(database_url)
    today = dt.datetime.now(dt.UTC).date()
    demo_data.load(engine, demo_data.generate(products=args.products, customers=30, end=today, seed=3))
    upgrade_app_schema(engine)

    home = Path(tempfile.mkdtemp(prefix="queue_soak_"))
    (home / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    storage = sa.engine.make_url(storage_url)
    env = {
        **{
            k: v for k, v in os.environ.items() if not k.startswith(("FORECAST_", "REDIS_", "DATABASE_URL", "DAGSTER_"))
        },
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": storage.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(storage.port or 5432),
        "DAGSTER_PG_DB": args.storage_db,
        "DAGSTER_PG_USER": storage.username or "postgres",
        "DAGSTER_PG_PASSWORD": storage.password or "",
        "DATABASE_URL": database_url,
        "REDIS_URL": args.redis_url,
        "FORECAST_KEY_PREFIX": "soak",
        "FORECAST_WORKERS": "1",
        "FORECAST_REQUEST_SENSOR_SECONDS": "2",
        "FORECAST_REQUEST_HEARTBEAT_SECONDS": "2",
        "FORECAST_REQUEST_RETRY_BASE_SECONDS": "1",
        "FORECAST_REQUEST_RETRY_MAX_SECONDS": "10",
    }

    valid: list[int] = []
    for _ in range(args.jobs):
        as_of = today - dt.timedelta(days=rng.randrange(1, 60))
        key = f"tenant-{rng.randrange(5)}" if rng.random() < 0.2 else None
        valid.append(
            request_queue.enqueue(
                engine, as_of_date=as_of, priority=rng.randrange(10), max_attempts=6, concurrency_key=key
            )
        )
    poison: dict[int, str] = {}
    for n in range(args.poison):
        parameters, reason = POISON[n % len(POISON)]
        text = json.dumps(parameters).replace("{today}", today.isoformat())
        text = text.replace("{yesterday}", (today - dt.timedelta(days=1)).isoformat())
        with engine.begin() as conn:
            request_id = conn.execute(
                forecast_requests.insert()
                .values(parameters=json.loads(text), priority=9)
                .returning(forecast_requests.c.id)
            ).scalar_one()
        poison[request_id] = reason

    log = open(home / "daemon.log", "w")  # noqa: SIM115 - open for the daemon's whole life
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_")})
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    started = time.monotonic()
    kills, most_active, next_kill = [], 0, started + args.kill_every
    try:
        with DagsterInstance.get() as instance:
            while True:
                with engine.connect() as conn:
                    counts = dict(
                        conn.execute(sa.text("SELECT status, count(*) FROM forecast_requests GROUP BY 1")).all()
                    )
                active = counts.get("claimed", 0) + counts.get("running", 0)
                most_active = max(most_active, active)
                if counts.get("queued", 0) + active == 0:
                    break
                if time.monotonic() - started > args.max_minutes * 60:
                    print(f"gave up after {args.max_minutes} minutes: {counts}", file=sys.stderr)
                    break
                if args.kill_every and time.monotonic() >= next_kill:
                    next_kill = time.monotonic() + args.kill_every
                    executing = instance.get_runs(
                        RunsFilter(
                            statuses=[DagsterRunStatus.STARTED], tags={"dagster/sensor_name": "forecast_request_queue"}
                        )
                    )
                    ours = descendants(daemon.pid)
                    targets = [(r, run_pid(instance, r.run_id)) for r in executing]
                    targets = [(r, pid) for r, pid in targets if pid in ours]
                    if targets:
                        run, pid = rng.choice(targets)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                            kills.append(run.run_id)
                time.sleep(2)
            elapsed = time.monotonic() - started
            records = instance.get_run_records(RunsFilter(tags=QUEUE_RUNS))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log.close()

    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(forecast_requests))}
    runs_by_job: dict[int, list] = {}
    for record in records:
        runs_by_job.setdefault(int(record.dagster_run.tags[request_queue.REQUEST_ID_TAG]), []).append(record)

    problems, unfinished = [], []
    for request_id in valid:
        row, runs = rows[request_id], runs_by_job.get(request_id, [])
        successes = [r for r in runs if r.dagster_run.status == DagsterRunStatus.SUCCESS]
        if row.status in ("queued", "claimed", "running") and not successes:
            unfinished.append(request_id)  # only when the soak gave up before the end
        elif row.status != "succeeded" or len(successes) != 1:
            problems.append(f"job {request_id}: {row.status}, {len(successes)} successful runs, error {row.error!r}")
        spans = sorted((r.start_time, r.end_time or time.time()) for r in runs if r.start_time)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            if start < end:
                problems.append(f"job {request_id}: two runs executed at the same time")
    for request_id, reason in poison.items():
        row = rows[request_id]
        if row.status != "failed" or reason not in (row.error or "") or runs_by_job.get(request_id):
            problems.append(
                f"poison job {request_id}: {row.status}, {row.error!r}, {len(runs_by_job.get(request_id, []))} runs"
            )
    events = sorted(
        [(r.start_time, 1) for r in records if r.start_time]
        + [(r.end_time, -1) for r in records if r.start_time and r.end_time]
    )
    executing, most_executing = 0, 0
    for _, step in events:
        executing += step
        most_executing = max(most_executing, executing)
    if most_executing > 2:
        problems.append(f"{most_executing} queue runs executed at once (limit 2)")

    latencies = [
        (rows[j].finished_at - rows[j].created_at).total_seconds() for j in valid if rows[j].finished_at is not None
    ]
    run_seconds = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    summary = {
        "jobs": args.jobs,
        "poison_rows": args.poison,
        "elapsed_seconds": round(elapsed, 1),
        "jobs_per_minute": round(args.jobs / elapsed * 60, 1),
        "runs": len(records),
        "kills": len(kills),
        "jobs_retried": sum(1 for j in valid if rows[j].attempts > 1),
        "most_active_requests": most_active,
        "most_runs_executing_at_once": most_executing,
        "run_seconds_median": round(statistics.median(run_seconds), 1) if run_seconds else None,
        "queue_to_done_seconds_median": round(statistics.median(latencies), 1) if latencies else None,
        "succeeded": sum(1 for j in valid if rows[j].status == "succeeded"),
        "unfinished_when_stopped": len(unfinished),
        "problems": problems[:20],
        "problem_count": len(problems),
        "daemon_log": str(home / "daemon.log"),
    }
    print(json.dumps(summary, indent=2))
    engine.dispose()
    return 1 if problems or unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
