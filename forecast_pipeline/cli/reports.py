"""``forecast-pipeline reports ...``: tables, plans, accounts, schedules, and a one-shot tick.

Wiring into :mod:`forecast_pipeline.cli.main`::

    from forecast_pipeline.cli.reports import REPORT_COMMANDS, add_report_commands
    ...
    add_report_commands(sub)          # in build_parser(), with the other sub-commands
    COMMANDS.update(REPORT_COMMANDS)  # {"reports": cmd_reports}

Handlers take ``(settings, args)`` like the other commands and return the exit code. Every write
is an upsert by name, so repeating a command changes nothing or updates in place.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from forecast_pipeline.app_db import report_tables as schema
from forecast_pipeline.app_db.postgres_only import postgres_only_reason
from forecast_pipeline.app_db.schema import upgrade_app_schema
from forecast_pipeline.connections import make_engine
from forecast_pipeline.reports.cadence import (
    CADENCES,
    ScheduleDefinitionError,
    catch_up,
    check_anchor_day,
    first_slot,
    load_timezone,
    parse_cadence,
)
from forecast_pipeline.reports.config import is_email_address, load_report_settings
from forecast_pipeline.reports.tick import tick
from forecast_pipeline.settings import ConfigError, Settings


class InputError(ValueError):
    """A command-line value the database cannot satisfy (unknown plan, foreign product): exit 2."""


def _limit(text: str) -> int | None:
    if text.strip().lower() in ("none", "unlimited"):
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (or 'none')") from exc
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more, or 'none'")
    return value


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be blank")
    if len(text.strip()) > 200:
        raise argparse.ArgumentTypeError("must be at most 200 characters")
    return text.strip()


def _time(text: str) -> dt.time:
    try:
        return dt.time.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time such as 06:00") from exc


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date such as 2025-11-10") from exc


def _timezone(text: str) -> str:
    try:
        load_timezone(text)
    except ScheduleDefinitionError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IANA time zone name (e.g. Europe/Berlin)") from exc
    return text.strip()


def _whole(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, got {text!r}")
        return value

    return parse


def _ids(text: str) -> list[int]:
    try:
        ids = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        ids = None
    if ids is None or any(i < 1 for i in ids):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of positive product ids")
    if not ids:
        raise argparse.ArgumentTypeError("give at least one product id")
    return ids


def _emails(text: str) -> list[str]:
    addresses = [part.strip() for part in text.split(",") if part.strip()]
    if not addresses:
        raise argparse.ArgumentTypeError("give at least one e-mail address")
    for address in addresses:
        if not is_email_address(address):
            raise argparse.ArgumentTypeError(f"{address!r} is not an e-mail address")
    return sorted(set(addresses))


def _one_line_errors(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """Bad input ends with one line naming the option and why, and exit 2 (no usage dump)."""

    def error(message: str):
        parser.exit(2, f"forecast-pipeline reports {command}: {message.removeprefix('argument ')}\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def add_report_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``reports`` and its sub-commands to the CLI's subparsers."""
    reports = subparsers.add_parser("reports", help="report plans, accounts and schedules; a one-shot tick")
    sub = reports.add_subparsers(dest="reports_command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return _one_line_errors(sub.add_parser(name, **kwargs), name)

    command("init", help="create the application tables (report tables included; safe to repeat)")
    plan = command("add-plan", help="create or update a plan")
    plan.add_argument("--name", type=_name, required=True, help="plan name (an existing plan is updated)")
    plan.add_argument("--monthly-limit", type=_limit, required=True, help="reports per month, or 'none' (unlimited)")
    account = command("add-account", help="create or update an account")
    account.add_argument("--name", type=_name, required=True, help="account name (an existing account is updated)")
    account.add_argument("--plan", type=_name, help="plan name (default: none, unlimited)")
    account.add_argument(
        "--timezone", type=_timezone, default="UTC", help="IANA time zone of the account's month and report dates"
    )
    account.add_argument(
        "--product-ids", type=_ids, help="comma list: the products the account owns (its reports cover only these)"
    )
    account.add_argument("--email", type=_emails, help="comma list of report recipients")
    add = command("add-schedule", help="create or update (and reactivate) a report schedule")
    add.add_argument("--account", type=_name, required=True, help="account name")
    add.add_argument(
        "--name", type=_name, required=True, help="schedule name, unique per account (an existing one is updated)"
    )
    add.add_argument("--cadence", required=True, choices=CADENCES, help="how often the report is made")
    add.add_argument("--timezone", type=_timezone, default="UTC", help="IANA time zone of the wall-clock time")
    add.add_argument("--time", type=_time, default="06:00", help="local time of day, HH:MM")
    add.add_argument("--day", type=_whole(1, 31), help="monthly: day of month 1-31, clamped to short months")
    add.add_argument("--start", type=_date, help="first local day, YYYY-MM-DD (default: today); past slots not run")
    add.add_argument(
        "--product-ids", type=_ids, help="comma list, a subset of the account's products (default: all of them)"
    )
    add.add_argument(
        "--top-products", type=_whole(1, 1000), help="products listed, 1-1000 (default: REPORT_TOP_PRODUCTS)"
    )
    add.add_argument("--email", type=_emails, help="comma list of recipients (default: the account's)")
    command("list", help="schedules with their next run and last result")
    run_tick = command("tick", help="record due slots and advance schedules once, like the sensor")
    run_tick.add_argument("--dry-run", action="store_true", help="compute only: write nothing")
    run_tick.add_argument("--json", action="store_true", help="print the result as JSON")
    return reports


def _upsert(conn: sa.Connection, table: sa.Table, values: dict, conflict: list[str]) -> int:
    statement = postgresql.insert(table).values(**values)
    update = {k: statement.excluded[k] for k in values if k not in conflict}
    return conn.execute(
        statement.on_conflict_do_update(index_elements=conflict, set_=update).returning(table.c.id)
    ).scalar_one()


def cmd_init(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.app_database_url)
    upgrade_app_schema(engine)
    print(f"Tables {', '.join(schema.REPORT_TABLES)} are ready")
    refused = postgres_only_reason(settings.app_database_url, "report scheduling")
    if refused:
        print(f"forecast-pipeline reports init: warning: {refused}", file=sys.stderr)
    return 0


def cmd_add_plan(settings: Settings, args: argparse.Namespace) -> int:
    with make_engine(settings.app_database_url).begin() as conn:
        plan_id = _upsert(conn, schema.plans, {"name": args.name, "monthly_report_limit": args.monthly_limit}, ["name"])
    limit = "unlimited" if args.monthly_limit is None else f"{args.monthly_limit} reports a month"
    print(f"plan {plan_id} {args.name!r}: {limit}")
    return 0


def cmd_add_account(settings: Settings, args: argparse.Namespace) -> int:
    load_timezone(args.timezone)
    with make_engine(settings.app_database_url).begin() as conn:
        plan_id = None
        if args.plan:
            plan_id = conn.execute(sa.select(schema.plans.c.id).where(schema.plans.c.name == args.plan)).scalar()
            if plan_id is None:
                raise InputError(f"--plan: no plan named {args.plan!r} (add it with `reports add-plan`)")
        parameters = {}
        if args.product_ids:
            parameters["product_ids"] = args.product_ids
        if args.email:
            parameters["email_to"] = args.email
        values = {
            "name": args.name,
            "plan_id": plan_id,
            "timezone": args.timezone,
            "parameters": parameters or None,
        }
        account_id = _upsert(conn, schema.accounts, values, ["name"])
    print(f"account {account_id} {args.name!r} ({args.timezone}, plan {args.plan or 'none: unlimited'})")
    return 0


def cmd_add_schedule(settings: Settings, args: argparse.Namespace) -> int:
    cadence = parse_cadence(args.cadence)
    tz = load_timezone(args.timezone)
    anchor_day = check_anchor_day(args.day)
    if anchor_day is not None and cadence != "monthly":
        raise ScheduleDefinitionError("--day applies to monthly schedules only")
    now = dt.datetime.now(dt.UTC)
    start = args.start or now.astimezone(tz).date()
    if cadence == "monthly" and anchor_day is None:
        anchor_day = start.day
    slot = first_slot(start, cadence, tz, args.time, anchor_day)
    if slot <= now:  # a start in the past: begin at the first future slot, run nothing retroactively
        slot = catch_up(slot, now, cadence, tz, run_time=args.time, anchor_day=anchor_day).next_slot
    parameters = {}
    if args.product_ids:
        parameters["product_ids"] = args.product_ids
    if args.top_products is not None:
        parameters["top_products"] = args.top_products
    if args.email:
        parameters["email_to"] = args.email
    with make_engine(settings.app_database_url).begin() as conn:
        account = conn.execute(
            sa.select(schema.accounts.c.id, schema.accounts.c.parameters).where(schema.accounts.c.name == args.account)
        ).one_or_none()
        if account is None:
            raise InputError(f"--account: no account named {args.account!r} (add it with `reports add-account`)")
        account_id = account.id
        owned = (account.parameters or {}).get("product_ids") if isinstance(account.parameters, dict) else None
        if args.product_ids and owned:
            foreign = sorted(set(args.product_ids) - set(owned))
            if foreign:
                raise InputError(
                    f"--product-ids: account {args.account!r} does not own product {', '.join(map(str, foreign))} "
                    f"(its products: {', '.join(map(str, owned))})"
                )
        values = {
            "account_id": account_id,
            "name": args.name,
            "cadence": cadence,
            "timezone": args.timezone,
            "next_run_at": slot,
            "run_time": args.time,
            "anchor_day": anchor_day,
            "active": True,
            "parameters": parameters or None,
            "last_error": None,
            "updated_at": now,
        }
        schedule_id = _upsert(conn, schema.report_schedules, values, ["account_id", "name"])
    print(
        f"schedule {schedule_id} {args.name!r}: {cadence} at {args.time:%H:%M} {args.timezone}, "
        f"next {slot.astimezone(tz).isoformat()}"
    )
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    s, r = schema.report_schedules.c, schema.schedule_runs.c
    last = (
        sa.select(r.status, r.scheduled_for)
        .where(r.schedule_id == s.id)
        .order_by(r.scheduled_for.desc())
        .limit(1)
        .lateral()
    )
    query = (
        sa.select(
            s.id,
            s.account_id,
            s.name,
            s.cadence,
            s.timezone,
            s.next_run_at,
            s.active,
            s.last_error,
            last.c.status,
            last.c.scheduled_for,
        )
        .select_from(schema.report_schedules.outerjoin(last, sa.true()))
        .order_by(s.id)
    )
    with make_engine(settings.app_database_url).connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        print("No report schedules (add one with `forecast-pipeline reports add-schedule`)")
    for row in rows:
        state = "active" if row.active else f"INACTIVE ({row.last_error or 'deactivated'})"
        previous = f", last {row.status} for {row.scheduled_for.isoformat()}" if row.status else ""
        print(
            f"{row.id:>5} account {row.account_id} {row.name!r}: {row.cadence} {row.timezone}, "
            f"next {row.next_run_at.isoformat()}, {state}{previous}"
        )
    return 0


def cmd_tick(settings: Settings, args: argparse.Namespace) -> int:
    report_settings = load_report_settings()
    result = tick(make_engine(settings.app_database_url), limit=report_settings.tick_limit, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **result.as_dict()}, indent=2))
        return 0
    for due in result.recorded:
        print(
            f"schedule {due.schedule_id}: slot {due.scheduled_for.isoformat()} "
            f"(missed {due.missed_slots}) -> next {result.advanced[due.schedule_id].isoformat()}"
        )
    for bad in result.malformed:
        print(
            f"schedule {bad.schedule_id} {bad.name!r}: malformed, {'would be ' if args.dry_run else ''}deactivated: "
            f"{bad.reason}"
        )
    print(("Dry run (nothing written): " if args.dry_run else "") + result.summary())
    if result.recorded and not args.dry_run:
        print(
            "The report_schedule_tick sensor launches these slots' runs once REPORT_LAUNCH_GRACE_SECONDS have passed."
        )
    return 0


REPORT_SUBCOMMANDS = {
    "init": cmd_init,
    "add-plan": cmd_add_plan,
    "add-account": cmd_add_account,
    "add-schedule": cmd_add_schedule,
    "list": cmd_list,
    "tick": cmd_tick,
}


def cmd_reports(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch ``forecast-pipeline reports <command>``; exit 2 on a bad setting or definition,
    1 when the application database is not PostgreSQL (no schedule could ever run there)."""
    refused = postgres_only_reason(settings.app_database_url, "report scheduling")
    if refused and args.reports_command != "init":
        print(f"forecast-pipeline reports {args.reports_command}: {refused}", file=sys.stderr)
        return 1
    try:
        return REPORT_SUBCOMMANDS[args.reports_command](settings, args)
    except InputError as exc:
        print(f"forecast-pipeline reports {args.reports_command}: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, ScheduleDefinitionError) as exc:
        print(f"forecast-pipeline reports {args.reports_command}: {exc}", file=sys.stderr)
        return 2


REPORT_COMMANDS = {"reports": cmd_reports}
