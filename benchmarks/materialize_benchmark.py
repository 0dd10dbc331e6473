"""End-to-end benchmark: N products of demo history in Postgres -> one partition -> Redis.

Generates ``--products`` products of order history (``FORECAST_HISTORY_START`` to the day before
the as-of date) into a dedicated Postgres database, then times the materialization of one as-of
partition exactly as a user runs it::

    dagster asset materialize -m forecast_pipeline --select '*' --partition DATE

in a subprocess with ``DATABASE_URL``, ``REDIS_URL`` and ``DAGSTER_HOME`` set. After each run the
stage timings recorded in the ``product_forecasts`` materialization (read, aggregate, model,
payload, write) are read back from the Dagster instance in ``DAGSTER_HOME``. Peak memory is the
largest sum of resident set sizes over the run's whole process tree, sampled every 50 ms from
``/proc`` (Linux only); every process's own peak is kept too and printed per step (each step's
process is found by the pid of its STEP_START event), with each step's wall time, the local Redis
server's peak RSS and the load average. Each configuration runs ``--runs`` times; medians are reported.

Machines of one kind differ by more than twofold (benchmarks/RESULTS.md), so the script first
times a fixed pure-Python loop (``machine_yardstick``) and prints each run's CPU steal (time the
hypervisor gave to other guests, from ``/proc/stat``): quote both with the figures, and compare
trees only within one session, alternated.

Usage (from the repository root)::

    .venv/bin/python benchmarks/materialize_benchmark.py --products 10000
    .venv/bin/python benchmarks/materialize_benchmark.py --products 10000 --skip-load \\
        --executors in_process,multiprocess --workers 1,2

Not a test: it takes minutes and loads millions of rows. It only touches the database named in
``--database-url`` (created if missing; its order tables are replaced) and the Redis DB number in
``--redis-url`` (flushed before each run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
LEGACY_PRODUCTS_PER_SECOND = "~18-20 (10,000 products in 8-10 min on 10 processes; ~8/s measured here)"
STAGES = ("read_seconds", "aggregate_seconds", "model_seconds", "payload_seconds", "write_seconds")
DAGSTER_YAML = "telemetry:\n  enabled: false\n"


def ensure_database(url: str) -> None:
    """Create the benchmark database if it does not exist (connects to ``postgres`` to do so; a
    SQLite file is created by its first connection)."""
    target = sa.engine.make_url(url)
    if target.get_backend_name() == "sqlite":
        return
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}).first()
        if not exists:
            conn.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
    admin.dispose()


def load_demo(url: str, products: int, customers: int, volume: float, as_of: dt.date, seed: int) -> dict:
    from forecast_pipeline.connections import make_engine
    from forecast_pipeline.source import demo_data

    started = time.perf_counter()
    history = demo_data.generate(
        products=products,
        customers=customers,
        start=dt.date(2019, 1, 1),
        end=as_of - dt.timedelta(days=1),
        seed=seed,
        lines_per_product_week=volume,
    )
    generate_seconds = time.perf_counter() - started
    engine = make_engine(url)
    started = time.perf_counter()
    counts = demo_data.load(engine, history)
    load_seconds = time.perf_counter() - started
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return {**counts, "generate_seconds": generate_seconds, "load_seconds": load_seconds}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


YARDSTICK_LOOPS = 10_000_000


def machine_yardstick() -> float:
    """Seconds for a fixed single-core pure-Python loop (best of 3): the machine's speed, to set
    beside figures measured on another machine."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(YARDSTICK_LOOPS):
            total += i
        best = min(best, time.perf_counter() - started)
    return best


def _cpu_ticks() -> tuple[int, int]:
    """(all, steal) CPU ticks since boot from /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def _processes() -> dict[int, tuple[int, int]]:
    """``{pid: (ppid, VmRSS bytes)}`` of every process, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        found[int(entry)] = (int(fields.get("PPid", "0").strip()), int(fields.get("VmRSS", "0 kB").split()[0]) * 1024)
    return found


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (/proc/pid/stat), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _tree(root: int, processes: dict[int, tuple[int, int]]) -> dict[int, int]:
    """``{pid: rss}`` of ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in processes.items():
        children.setdefault(ppid, []).append(pid)
    tree, stack = {}, [root]
    while stack:
        pid = stack.pop()
        if pid in processes:
            tree[pid] = processes[pid][1]
        stack.extend(children.get(pid, []))
    return tree


def _tree_rss_bytes(root: int) -> tuple[int, int]:
    """Sum of VmRSS over ``root`` and all its descendants, and the largest single one, from /proc."""
    tree = _tree(root, _processes())
    return sum(tree.values()), max(tree.values(), default=0)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return ""


def run_once(env: dict[str, str], as_of: dt.date, select: str = "*") -> dict:
    """One ``dagster asset materialize`` in a subprocess: wall time, peak tree RSS, exit code."""
    command = [
        str(REPO / ".venv" / "bin" / "dagster"),
        "asset",
        "materialize",
        "-m",
        "forecast_pipeline",
        "--select",
        select,
        "--partition",
        as_of.isoformat(),
    ]
    peak = peak_process = 0
    per_process: dict[int, int] = {}  # peak RSS of every process of the run's tree
    commands: dict[int, str] = {}
    cpu_seen: dict[int, float] = {}  # CPU seconds of every process of the tree, last sampled
    redis_pid, redis_peak = _redis_pid(env.get("REDIS_URL")), 0
    load_start = os.getloadavg()
    ticks_before = _cpu_ticks()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        processes = _processes()
        tree = _tree(proc.pid, processes)
        peak, peak_process = max(peak, sum(tree.values())), max(peak_process, max(tree.values(), default=0))
        for pid, rss in tree.items():
            per_process[pid] = max(per_process.get(pid, 0), rss)
            if pid not in commands:
                commands[pid] = _cmdline(pid)
            used = _cpu_seconds(pid)
            if used is not None:
                cpu_seen[pid] = used
        if redis_pid in processes:
            redis_peak = max(redis_peak, processes[redis_pid][1])
        time.sleep(0.05)
    wall = time.perf_counter() - started
    ticks_after = _cpu_ticks()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    reader.join()
    if proc.returncode != 0:
        sys.stderr.write("".join(output[-60:]))
        raise SystemExit(f"dagster asset materialize exited with {proc.returncode}")
    # CPU seconds of the run's whole process tree: on a loaded shared machine a steadier
    # measure of the work done than wall time (PostgreSQL's and Redis's are not in it)
    return {
        "wall_seconds": wall,
        # the sum over every process of the tree as last sampled: with the forkserver, step
        # processes are not the CLI's waited children, so getrusage misses them
        "cpu_seconds": sum(cpu_seen.values()),
        "cpu_rusage_seconds": cpu,
        "peak_rss_mib": peak / 2**20,
        "peak_process_mib": peak_process / 2**20,
        "per_process_mib": {pid: rss / 2**20 for pid, rss in per_process.items()},
        "commands": commands,
        "cli_pid": proc.pid,
        "redis_peak_rss_mib": redis_peak / 2**20,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        # the share of the machine's CPU time the hypervisor gave to other guests during the run
        "steal_share": (ticks_after[1] - ticks_before[1]) / max(1, ticks_after[0] - ticks_before[0]),
    }


def _redis_pid(url: str | None) -> int | None:
    """The Redis server's pid when it runs on this machine (its RSS is sampled with the run's)."""
    if not url:
        return None
    import redis

    try:
        return int(redis.Redis.from_url(url).info("server")["process_id"])
    except Exception:  # noqa: BLE001 - a remote Redis: not sampled
        return None


def latest_figures(dagster_home: str) -> dict:
    """Stage timings and run figures from the newest product_forecasts materialization, plus the
    run's own start/end (so Dagster's start-up and shutdown can be told apart from the steps)."""
    from dagster import AssetKey, DagsterInstance

    os.environ["DAGSTER_HOME"] = dagster_home
    with DagsterInstance.get() as instance:
        forecasts = instance.fetch_materializations(AssetKey("product_forecasts"), limit=1).records[0]
        eligible = instance.fetch_materializations(AssetKey("eligible_products"), limit=1).records[0]
        meta = {k: v.value for k, v in forecasts.asset_materialization.metadata.items()}
        meta["eligible_query_seconds"] = eligible.asset_materialization.metadata["query_seconds"].value
        stats = instance.get_run_stats(forecasts.run_id)
        meta["run_seconds"] = (stats.end_time or 0) - (stats.start_time or 0)
        meta["steps"] = _step_figures(instance, forecasts.run_id)
    return meta


def _step_figures(instance, run_id: str) -> dict[str, dict]:
    """Each step's wall seconds (start to success or failure) and the pid it ran in."""
    from dagster import DagsterEventType

    steps: dict[str, dict] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        step = steps.setdefault(event.step_key, {})
        if event.event_type == DagsterEventType.STEP_START:
            step["start"], step["pid"] = entry.timestamp, event.pid
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            step["end"] = entry.timestamp
    for step in steps.values():
        step["seconds"] = step.get("end", 0) - step.get("start", 0)
    return steps


def step_memory_report(result: dict) -> list[str]:
    """One line per step (wall seconds, peak RSS of the process it ran in), then the processes
    no step ran in (the CLI that coordinates the run, forkserver, resource trackers)."""
    lines, step_pids = [], set()
    cli = result.get("cli_pid")
    for key, step in sorted(result.get("steps", {}).items(), key=lambda kv: kv[1].get("start", 0)):
        pid = step.get("pid")
        step_pids.add(pid)
        mib = result["per_process_mib"].get(pid)
        where = "in the CLI process" if pid == cli else f"pid {pid}"
        lines.append(
            f"    step {key}: {step['seconds']:.1f}s, {where}, peak RSS "
            + (f"{mib:,.0f} MiB" if mib is not None else "not sampled")
        )
    others: dict[str, list[float]] = {}  # the other processes, by what they run
    for pid, mib in sorted(result["per_process_mib"].items()):
        if pid == cli:
            lines.append(f"    CLI (runs the run, launches the step processes) pid {pid}: peak RSS {mib:,.0f} MiB")
        elif pid not in step_pids:
            others.setdefault(" ".join(result["commands"].get(pid, "?").split()[:3])[:70], []).append(mib)
    for command, mibs in sorted(others.items()):
        lines.append(f"    {len(mibs)} x {command}: peak RSS {max(mibs):,.0f} MiB (largest)")
    lines.append(f"    Redis server peak RSS during the run: {result.get('redis_peak_rss_mib', 0):,.0f} MiB")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--customers", type=int, help="default: products / 2.5")
    parser.add_argument("--volume", type=float, default=0.9, help="lines_per_product_week (0.9: ~2.1M lines / 10k)")
    parser.add_argument("--as-of", default="2026-11-16", help="partition to materialize (YYYY-MM-DD)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--executors", default="in_process", help="comma list of FORECAST_EXECUTOR values")
    parser.add_argument("--workers", default="2", help="comma list of FORECAST_WORKERS values")
    parser.add_argument("--database-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/forecast_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--dagster-home", help="default: a fresh temporary directory")
    parser.add_argument("--select", default="*", help="asset selection (default '*': every asset, as the issue asks)")
    parser.add_argument("--skip-load", action="store_true", help="reuse the data already in the database")
    args = parser.parse_args(argv)
    as_of = dt.date.fromisoformat(args.as_of)

    ensure_database(args.database_url)
    if not args.skip_load:
        customers = args.customers or max(400, int(args.products / 2.5))
        loaded = load_demo(args.database_url, args.products, customers, args.volume, as_of, args.seed)
        print(
            f"generated {loaded['order_items']:,} order lines / {loaded['orders']:,} orders for "
            f"{args.products:,} products in {loaded['generate_seconds']:.1f}s; "
            f"loaded into Postgres in {loaded['load_seconds']:.1f}s"
        )

    if args.runs < 1:  # --runs 0: load the data only
        return 0
    dagster_home = args.dagster_home or tempfile.mkdtemp(prefix="forecast_bench_home_")
    Path(dagster_home).mkdir(parents=True, exist_ok=True)
    (Path(dagster_home) / "dagster.yaml").write_text(DAGSTER_YAML)

    import redis

    print(f"machine yardstick: {machine_yardstick():.2f}s for {YARDSTICK_LOOPS:,} Python loop iterations", flush=True)
    rows = []
    for executor in args.executors.split(","):
        for workers in args.workers.split(","):
            env = {
                **os.environ,
                "DATABASE_URL": args.database_url,
                "REDIS_URL": args.redis_url,
                "DAGSTER_HOME": dagster_home,
                "FORECAST_EXECUTOR": executor,
                "FORECAST_WORKERS": workers,
            }
            runs = []
            for i in range(args.runs):
                redis.Redis.from_url(args.redis_url).flushdb()
                result = run_once(env, as_of, args.select)
                result.update(latest_figures(dagster_home))
                runs.append(result)
                print(
                    f"  {executor} workers={workers} run {i + 1}: {result['wall_seconds']:.1f}s wall, "
                    f"{result['cpu_seconds']:.1f}s CPU (getrusage {result['cpu_rusage_seconds']:.1f}s), "
                    f"{result['total_products']} products, peak {result['peak_rss_mib']:.0f} MiB "
                    f"(largest process {result['peak_process_mib']:.0f} MiB), "
                    + ", ".join(f"{s.removesuffix('_seconds')} {result[s]:.2f}s" for s in STAGES)
                    + f"; load average {result['load_start'][0]:.1f} at start, {result['load_end'][0]:.1f} at end"
                    + f", CPU steal {100 * result['steal_share']:.1f}%",
                    flush=True,
                )
                print("\n".join(step_memory_report(result)), flush=True)
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], int | float)}
            rows.append((executor, workers, med, max(r["peak_rss_mib"] for r in runs)))

    print(
        f"\n{args.products:,} products generated, as-of {as_of}, --select {args.select!r}, "
        f"median of {args.runs} runs each"
    )
    print(
        "| executor | workers | eligible products | wall s | products/s | eligible query s | "
        + " | ".join(s.removesuffix("_seconds") + " s" for s in STAGES)
        + " | steps' other work s | process start-up + shutdown s | peak RSS MiB (max) | holdout WAPE |"
    )
    print("|" + "---|" * (10 + len(STAGES)))
    for executor, workers, med, peak in rows:
        in_run = med["run_seconds"] - med["eligible_query_seconds"] - sum(med[s] for s in STAGES)
        print(
            f"| {executor} | {workers} | {med['total_products']:,.0f} | {med['wall_seconds']:.1f} | "
            f"{med['total_products'] / med['wall_seconds']:,.0f} | {med['eligible_query_seconds']:.2f} | "
            + " | ".join(f"{med[s]:.2f}" for s in STAGES)
            + f" | {in_run:.1f} | {med['wall_seconds'] - med['run_seconds']:.1f} | {peak:,.0f} | "
            f"{med.get('holdout_wape', float('nan')):.3f} |"
        )
    print(f"| legacy worker | 10 processes | 10,000 | 480-600 | {LEGACY_PRODUCTS_PER_SECOND} |" + " |" * 10)
    print(
        "\nsteps' other work: Dagster run time (RUN_START to RUN_SUCCESS) minus the timed stages (step set-up, "
        "IO manager bookkeeping, event log writes, asset checks); start-up + shutdown: wall minus run time "
        "(interpreter, imports, code location load, instance)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
