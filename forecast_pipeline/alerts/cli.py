"""``forecast-pipeline alerts init`` and ``forecast-pipeline alerts evaluate [--dry-run] [--json]``.

Wiring into :mod:`forecast_pipeline.cli`::

    from forecast_pipeline.alerts.cli import ALERT_COMMANDS, add_alert_commands
    ...
    add_alert_commands(sub)          # in build_parser(), with the other sub-commands
    COMMANDS.update(ALERT_COMMANDS)  # {"alerts": cmd_alerts}

Both handlers take ``(settings, args)`` like the other commands and return the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys

from forecast_pipeline.alerts import defaults, schema
from forecast_pipeline.alerts.config import load_alert_settings
from forecast_pipeline.alerts.service import run_evaluation
from forecast_pipeline.app_db import AppDatabase, create_app_schema
from forecast_pipeline.settings import ConfigError, Settings


def add_alert_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``alerts`` with its ``init`` and ``evaluate`` sub-commands to the CLI's subparsers."""
    alerts = subparsers.add_parser("alerts", help="alert tables, default pipeline alerts, one-shot evaluation")
    sub = alerts.add_subparsers(dest="alerts_command", required=True)
    sub.add_parser(
        "init",
        help="create the application tables (alerts included) and the default pipeline alerts (safe to repeat)",
    )
    evaluate = sub.add_parser("evaluate", help="evaluate every enabled alert once and print the result")
    evaluate.add_argument("--dry-run", action="store_true", help="decide only: write no event, send nothing")
    evaluate.add_argument("--json", action="store_true", help="print the figures and outcomes as JSON")
    return alerts


def _app_db(settings: Settings) -> AppDatabase:
    return AppDatabase(url=settings.app_database_url)


def cmd_alerts_init(settings: Settings, args: argparse.Namespace) -> int:
    app_db = _app_db(settings)
    engine = app_db.engine()
    try:
        create_app_schema(engine)
        with engine.begin() as conn:
            created = defaults.ensure_defaults(conn)
    finally:
        engine.dispose()
    print(f"Tables {', '.join(schema.ALERT_TABLES)} are ready in {app_db.redacted_url()}")
    if created:
        print("Created default alerts: " + "; ".join(created))
    else:
        print(f"Default alerts of source {defaults.PIPELINE_SOURCE!r} already present")
    return 0


def cmd_alerts_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when every alert could be evaluated or skipped, 1 when any alert errored."""
    try:
        alert_settings = load_alert_settings()
    except ConfigError as exc:
        print(f"forecast-pipeline alerts: {exc}", file=sys.stderr)
        return 2
    app_db = _app_db(settings)
    engine = app_db.engine()
    try:
        missing = schema.missing_tables(engine)
        if missing:
            print(
                f"Alert tables missing in {app_db.redacted_url()} ({', '.join(missing)}): "
                "run `forecast-pipeline alerts init`",
                file=sys.stderr,
            )
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


ALERT_SUBCOMMANDS = {"init": cmd_alerts_init, "evaluate": cmd_alerts_evaluate}


def cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch ``forecast-pipeline alerts <init|evaluate>``."""
    return ALERT_SUBCOMMANDS[args.alerts_command](settings, args)


ALERT_COMMANDS = {"alerts": cmd_alerts}
