"""``forecast-pipeline``: set up the database, make demo data, check the config, show results.

The forecasts themselves run through Dagster (``dagster asset materialize``, the UI or the
schedule); this command covers everything around them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

import sqlalchemy as sa

from forecast_pipeline import demo_data, forecast_cache, order_history, source_schema
from forecast_pipeline.settings import ConfigError, Settings, load_settings, redact_url


def _engine(settings: Settings) -> sa.Engine:
    from forecast_pipeline.resources import make_engine

    return make_engine(settings.database_url)


def _redis(settings: Settings):
    from forecast_pipeline.resources import connect_redis

    return connect_redis(settings.redis_url, settings.redis_password)


def cmd_init_db(settings: Settings, args: argparse.Namespace) -> int:
    engine = _engine(settings)
    source_schema.create_schema(engine)
    print(f"Tables {', '.join(source_schema.SOURCE_TABLES)} are ready in {redact_url(settings.database_url)}")
    return 0


def cmd_demo_data(settings: Settings, args: argparse.Namespace) -> int:
    end = dt.date.fromisoformat(args.as_of) if args.as_of else dt.date.today()
    started = time.perf_counter()
    history = demo_data.generate(
        products=args.products,
        customers=args.customers,
        start=settings.history_start,
        end=end,
        seed=args.seed,
        lines_per_product_week=args.volume,
    )
    engine = _engine(settings)
    counts = demo_data.load(engine, history)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    summary = ", ".join(f"{v:,} {k}" for k, v in counts.items())
    print(
        f"Loaded {summary} ({settings.history_start} to {end}, seed {args.seed}) into "
        f"{redact_url(settings.database_url)} in {time.perf_counter() - started:.1f}s"
    )
    return 0


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """Check each dependency and say what is wrong; exit 1 if anything is."""
    ok = True
    print("configuration: ok")
    engine = _engine(settings)
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
        print(f"database {redact_url(settings.database_url)}: FAILED: {getattr(exc, 'orig', None) or exc}")
    try:
        client = _redis(settings)
        print(f"redis {redact_url(settings.redis_url)}: reachable")
        client.close()
    except Exception as exc:  # noqa: BLE001 - report whatever went wrong, then exit 1
        ok = False
        print(f"redis: FAILED: {exc}")
    return 0 if ok else 1


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    client = _redis(settings)
    prefix = settings.key_prefix
    metadata = forecast_cache.read_run_metadata(client, prefix, args.as_of)
    if metadata is None:
        print(f"No run metadata in Redis ({forecast_cache.metadata_key(prefix, args.as_of)}): has a run finished?")
        return 1
    print(f"{forecast_cache.metadata_key(prefix, args.as_of)}:")
    print(json.dumps(metadata, indent=2))
    if args.product is not None:
        product_id = args.product
    else:
        forecasts = forecast_cache.read_forecasts_for(client, prefix, metadata["as_of_date"])
        if not forecasts:
            print("No forecasts cached for that as-of date.")
            return 1
        product_id = max(forecasts, key=lambda p: forecasts[p]["summary"]["total_predicted_quantity"])
    doc = forecast_cache.read_forecast(client, prefix, product_id)
    if doc is None:
        print(f"No forecast cached under {forecast_cache.forecast_key(prefix, product_id)}")
        return 1
    print(f"\n{forecast_cache.forecast_key(prefix, product_id)}:")
    print(json.dumps(doc, indent=2) if args.json else _format_forecast(doc))
    return 0


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
    """Rolling-origin accuracy of the engine vs seasonal naive and Holt-Winters (see backtest.py)."""
    from forecast_pipeline import backtest

    as_of = dt.date.fromisoformat(args.as_of) if args.as_of else dt.date.today()
    common = {
        "origins": args.origins,
        "step": args.step,
        "horizon": settings.forecast_weeks,
        "hw_sample": args.hw_sample,
    }
    results = []
    if args.source == "demo":
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
        results.append(backtest.run_backtest(y, label=title, eligible_at=eligible_at, origin_label=label, **common))
    else:
        y, label = backtest.database_matrix(settings, as_of)
        title = f"{redact_url(settings.database_url)}: products eligible at {as_of}"
        results.append(backtest.run_backtest(y, label=title, origin_label=label, **common))
    if not args.no_real:
        y, label = backtest.co2_matrix()
        real = {**common, "origins": args.real_origins, "hw_sample": 1}
        results.append(
            backtest.run_backtest(y, label="statsmodels co2 (Mauna Loa, weekly 1958-2001)", origin_label=label, **real)
        )
    for result in results:
        print(backtest.format_result(result))
        print()
        print(backtest.format_checks(backtest.summary_checks(result)))
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forecast-pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init-db", help="create the default order tables (safe to repeat)")
    demo = sub.add_parser("demo-data", help="replace the order tables' contents with generated history")
    demo.add_argument("--products", type=int, default=300)
    demo.add_argument("--customers", type=int, default=400)
    demo.add_argument("--as-of", help="last day of history, YYYY-MM-DD (default: today)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--volume", type=float, default=3.0, help="average order lines per product-week")
    sub.add_parser("check", help="check the configuration, database, tables and Redis")
    show = sub.add_parser("show", help="print the last run's metadata and one cached forecast")
    show.add_argument("--product", type=int, help="product id (default: the largest forecast)")
    show.add_argument("--as-of", help="a past as-of date's metadata instead of the last run")
    show.add_argument("--json", action="store_true", help="print the cached JSON as is")
    bt = sub.add_parser("backtest", help="rolling-origin accuracy vs seasonal naive and Holt-Winters")
    bt.add_argument("--source", choices=("demo", "database"), default="demo", help="demo: generated in memory")
    bt.add_argument("--as-of", help="as-of date after the last test window, YYYY-MM-DD (default: today)")
    bt.add_argument("--products", type=int, default=10_000, help="demo products")
    bt.add_argument("--volume", type=float, default=0.9, help="demo order lines per product-week")
    bt.add_argument("--seed", type=int, default=7)
    bt.add_argument("--origins", type=int, default=4, help="rolling origins")
    bt.add_argument("--step", type=int, default=12, help="weeks between origins")
    bt.add_argument("--hw-sample", type=int, default=200, help="products per origin fitted with Holt-Winters")
    bt.add_argument("--real-origins", type=int, default=12, help="origins on the real weekly series")
    bt.add_argument("--no-real", action="store_true", help="skip the real weekly series (statsmodels co2)")
    return parser


COMMANDS = {
    "init-db": cmd_init_db,
    "demo-data": cmd_demo_data,
    "check": cmd_check,
    "show": cmd_show,
    "backtest": cmd_backtest,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"forecast-pipeline: {exc}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](settings, args)
    except Exception as exc:  # noqa: BLE001 - a one-line reason beats a traceback for operators
        from dagster import Failure

        message = exc.description if isinstance(exc, Failure) else f"{type(exc).__name__}: {exc}"
        print(f"forecast-pipeline {args.command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
