"""``forecast-pipeline alerts init|add|evaluate|notifications``.

Wiring into :mod:`forecast_pipeline.cli.main`::

    from forecast_pipeline.cli.alerts import ALERT_COMMANDS, add_alert_commands
    ...
    add_alert_commands(sub)          # in build_parser(), with the other sub-commands
    COMMANDS.update(ALERT_COMMANDS)  # {"alerts": cmd_alerts}

Both handlers take ``(settings, args)`` like the other commands and return the exit code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import sqlalchemy as sa

from forecast_pipeline.alerts import defaults, notify, store
from forecast_pipeline.alerts.config import load_alert_settings
from forecast_pipeline.alerts.service import run_evaluation
from forecast_pipeline.app_db import alert_tables as schema
from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.connections import make_engine
from forecast_pipeline.settings import ConfigError, Settings, redact_url


def finite_number(text: str) -> float:
    """An argparse type: a finite number (a NaN threshold would keep an alert silent for ever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a notification id") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a notification id")
    return value


def add_alert_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``alerts`` with its sub-commands to the CLI's subparsers."""
    alerts = subparsers.add_parser("alerts", help="alert tables and rules, one-shot evaluation, notifications")
    sub = alerts.add_subparsers(dest="alerts_command", required=True)
    sub.add_parser(
        "init",
        help="create the application tables (alerts included) and the default pipeline alerts (safe to repeat)",
    )
    add = sub.add_parser("add", help="add an alert on a source's metric (the source is created if missing)")
    add.add_argument("--source", required=True, help="source (device) name")
    add.add_argument("--metric", required=True, help="metric name in the source's readings (e.g. failure_rate)")
    add.add_argument(
        "--operator",
        required=True,
        choices=schema.OPERATORS,
        help="how the reading compares with --threshold to trigger",
    )
    add.add_argument("--threshold", required=True, type=finite_number, help="a finite number")
    add.add_argument("--path", help="value path: a.b.0, json_value.a, metadata.a or $age (default: value)")
    add.add_argument("--name", help="unique name (optional)")
    add.add_argument("--description", help="free text shown with the alert's events (optional)")
    evaluate = sub.add_parser("evaluate", help="evaluate every enabled alert once and print the result")
    evaluate.add_argument("--dry-run", action="store_true", help="decide only: write no event, send nothing")
    evaluate.add_argument("--json", action="store_true", help="print the figures and outcomes as JSON")
    notifications = sub.add_parser("notifications", help="the webhook outbox: list, resend dead letters")
    notifications_sub = notifications.add_subparsers(dest="notifications_command", required=True)
    listing = notifications_sub.add_parser("list", help="notifications, oldest first (default: not yet delivered)")
    listing.add_argument("--status", choices=notify.STATUSES, default="unsent", help="which notifications to list")
    listing.add_argument("--limit", type=int, default=50, help="at most this many")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    resend = notifications_sub.add_parser(
        "resend", help="put dead-lettered notifications back in the queue (and send them if ALERT_WEBHOOK_URL is set)"
    )
    resend.add_argument("ids", nargs="*", type=positive_id, metavar="ID", help="notification ids")
    resend.add_argument("--all", action="store_true", help="every dead-lettered notification")
    return alerts


def cmd_alerts_init(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.app_database_url)
    try:
        upgrade_app_schema(engine)
        with engine.begin() as conn:
            created = defaults.ensure_defaults(conn)
    finally:
        engine.dispose()
    print(f"Tables {', '.join(schema.ALERT_TABLES)} are ready in {redact_url(settings.app_database_url)}")
    if created:
        print("Created default alerts: " + "; ".join(created))
    else:
        print(f"Default alerts of source {defaults.PIPELINE_SOURCE!r} already present")
    return 0


def _usage_error(message: str) -> int:
    print(f"forecast-pipeline alerts: {message}", file=sys.stderr)
    return 2


def _missing_tables(settings: Settings, engine: sa.Engine) -> bool:
    missing = schema.missing_tables(engine)
    if missing:
        print(
            f"Alert tables missing in {redact_url(settings.app_database_url)} ({', '.join(missing)}): "
            "run `forecast-pipeline alerts init`",
            file=sys.stderr,
        )
    return bool(missing)


def cmd_alerts_add(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.app_database_url)
    try:
        if _missing_tables(settings, engine):
            return 1
        with engine.begin() as conn:
            source_id = store.ensure_source(conn, args.source)
            alert_id = conn.execute(
                sa.insert(schema.alerts)
                .values(
                    name=args.name,
                    device_id=source_id,
                    metric=args.metric,
                    operator=args.operator,
                    threshold_value=args.threshold,
                    value_path=args.path,
                    description=args.description,
                    is_enabled=True,
                )
                .returning(schema.alerts.c.id)
            ).scalar_one()
    except sa.exc.IntegrityError as exc:
        return _usage_error(f"alert not added: {getattr(exc, 'orig', None) or exc}".splitlines()[0])
    finally:
        engine.dispose()
    print(f"added alert {alert_id}: {args.source}/{args.metric} {args.operator} {args.threshold:g}")
    return 0


def cmd_alerts_notifications(settings: Settings, args: argparse.Namespace) -> int:
    """``list``: the outbox for an operator. ``resend``: dead letters back in the queue; exit 2 for
    ids that are not dead-lettered (nothing is requeued then)."""
    try:
        alert_settings = load_alert_settings()
    except ConfigError as exc:
        return _usage_error(str(exc))
    if args.notifications_command == "resend" and bool(args.ids) == bool(args.all):
        return _usage_error("give the ids of the notifications to resend, or --all")
    engine = make_engine(settings.app_database_url)
    try:
        if _missing_tables(settings, engine):
            return 1
        if args.notifications_command == "list":
            with engine.connect() as conn:
                rows = notify.list_notifications(conn, args.status, args.limit)
            _print_notifications(rows, args.json)
            return 0
        with engine.begin() as conn:
            if args.ids:
                dead = {row["id"] for row in notify.list_notifications(conn, "dead", limit=1_000_000)}
                unknown = [i for i in args.ids if i not in dead]
                if unknown:
                    return _usage_error(
                        f"no dead-lettered notification {', '.join(map(str, unknown))} "
                        "(see `forecast-pipeline alerts notifications list --status dead`)"
                    )
            requeued = notify.requeue(conn, None if args.all else args.ids)
        line = f"requeued {requeued} notification(s)"
        if alert_settings.webhook_url is None:
            print(f"{line}; ALERT_WEBHOOK_URL is not set here: the alert_notification_sensor sends them")
            return 0
        stats = notify.deliver_pending(engine, alert_settings, log=lambda m: print(m, file=sys.stderr))
        print(f"{line}; delivery: {stats.summary()}")
        return 0
    finally:
        engine.dispose()


def _print_notifications(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'id':>6} {'alert':>6} {'event':>6} {'kind':<9} {'status':<7} {'tries':>5}  {'when':<25}  last error")
    for row in rows:
        when = {"sent": row["sent_at"], "dead": row["dead_lettered_at"]}.get(row["status"]) or (
            f"next {row['next_attempt_at']}" if row["next_attempt_at"] else "due"
        )
        print(
            f"{row['id']:>6} {row['alert_id']:>6} {row['event_id']:>6} {row['kind']:<9} {row['status']:<7} "
            f"{row['attempts']:>5}  {when:<25}  {(row['last_error'] or '')[:100]}"
        )


def cmd_alerts_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when every alert could be evaluated or skipped, 1 when any alert errored."""
    try:
        alert_settings = load_alert_settings()
    except ConfigError as exc:
        print(f"forecast-pipeline alerts: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.app_database_url)
    try:
        if _missing_tables(settings, engine):
            return 1
        result = run_evaluation(engine, alert_settings, dry_run=args.dry_run)
    finally:
        engine.dispose()
    stats = result.stats
    if args.json:
        outcomes = [
            {
                "alert_id": o.alert_id,
                "alert_name": o.alert_name,
                "source": o.source_name,
                "metric": o.metric,
                "action": o.decision.action,
                "value": o.decision.value,
                "message": o.decision.message,
                "event_id": o.event_id,
            }
            for o in result.outcomes
        ]
        print(json.dumps({"dry_run": args.dry_run, "stats": stats.as_dict(), "outcomes": outcomes}, indent=2))
    else:
        for outcome in result.outcomes:
            print(outcome.line())
        print(f"{'Dry run (nothing written): ' if args.dry_run else ''}{stats.summary()}")
    return 1 if stats.errors else 0


ALERT_SUBCOMMANDS = {
    "init": cmd_alerts_init,
    "add": cmd_alerts_add,
    "evaluate": cmd_alerts_evaluate,
    "notifications": cmd_alerts_notifications,
}


def cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch ``forecast-pipeline alerts <init|add|evaluate|notifications>``."""
    return ALERT_SUBCOMMANDS[args.alerts_command](settings, args)


ALERT_COMMANDS = {"alerts": cmd_alerts}
