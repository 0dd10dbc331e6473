"""``forecast-pipeline reports ...``: tables, plans, accounts, schedules, and a one-shot tick.

Wiring into :mod:`forecast_pipeline.cli.main`::

    from forecast_pipeline.cli.reports import REPORT_COMMANDS, add_report_commands
    ...
    add_report_commands(sub)          # in build_parser(), with the other sub-commands
    COMMANDS.update(REPORT_COMMANDS)  # {"reports": cmd_reports}

Handlers take ``(settings, args)`` like the other commands and return the exit code. Every write
is an upsert by name, so repeating a command changes nothing or updates in place: on an existing
account or schedule the options given replace their stored values and the options left out keep
theirs (a new one gets the defaults).
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
    slot_day,
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
        value = dt.time.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time such as 06:00") from exc
    if value.tzinfo is not None:  # "06:00+02:00", "06:00Z": the offset would be ignored
        raise argparse.ArgumentTypeError(
            f"{text!r} has a UTC offset: give the local time, HH:MM, in the schedule's --timezone"
        )
    return value


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
    account = command(
        "add-account",
        help="create or update an account",
        epilog="An existing account keeps the stored value of every option left out; the defaults are for a new one.",
    )
    account.add_argument("--name", type=_name, required=True, help="account name (an existing account is updated)")
    account.add_argument("--plan", type=_name, help="plan name (default: none, unlimited)")
    account.add_argument(
        "--timezone", type=_timezone, help="IANA time zone of the account's month and report dates (default: UTC)"
    )
    account.add_argument(
        "--product-ids", type=_ids, help="comma list: the products the account owns (its reports cover only these)"
    )
    account.add_argument("--email", type=_emails, help="comma list of report recipients")
    add = command(
        "add-schedule",
        help="create or update (and reactivate) a report schedule",
        epilog="An existing schedule (same --account and --name) keeps the stored value of every option left out "
        "(its day and weekday too); the defaults are for a new one.",
    )
    add.add_argument("--account", type=_name, required=True, help="account name")
    add.add_argument(
        "--name", type=_name, required=True, help="schedule name, unique per account (an existing one is updated)"
    )
    add.add_argument("--cadence", required=True, choices=CADENCES, help="how often the report is made")
    add.add_argument("--timezone", type=_timezone, help="IANA time zone of the wall-clock time (default: UTC)")
    add.add_argument(
        "--time", type=_time, help="local time of day in --timezone, HH:MM, no UTC offset (default: 06:00)"
    )
    add.add_argument(
        "--day", type=_whole(1, 31), help="monthly: day of month 1-31, clamped to short months (default: --start's)"
    )
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


def _upsert(
    conn: sa.Connection, table: sa.Table, values: dict, conflict: list[str], only: list[str] | None = None
) -> int:
    """Insert ``values`` or update the row with the same ``conflict`` columns: all the other
    columns, or just those in ``only`` (an existing row keeps the rest)."""
    statement = postgresql.insert(table).values(**values)
    update = {k: statement.excluded[k] for k in values if k not in conflict and (only is None or k in only)}
    update = update or {conflict[0]: statement.excluded[conflict[0]]}  # nothing to change: still return the id
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


def _given_parameters(stored: object, given: dict) -> dict | None:
    """The stored ``parameters`` with the keys of the options given replaced (None when empty)."""
    parameters = dict(stored) if isinstance(stored, dict) else {}
    parameters.update({key: value for key, value in given.items() if value is not None})
    return parameters or None


def cmd_add_account(settings: Settings, args: argparse.Namespace) -> int:
    """Create an account with the defaults of the options left out, or update an existing one's
    given options only: a re-run to change the plan keeps its time zone, products and recipients."""
    if args.timezone is not None:
        load_timezone(args.timezone)
    a, p = schema.accounts.c, schema.plans.c
    with make_engine(settings.app_database_url).begin() as conn:
        plan_id = None
        if args.plan:
            plan_id = conn.execute(sa.select(p.id).where(p.name == args.plan)).scalar()
            if plan_id is None:
                raise InputError(f"--plan: no plan named {args.plan!r} (add it with `reports add-plan`)")
        stored = conn.execute(sa.select(a.parameters).where(a.name == args.name).with_for_update()).one_or_none()
        given = {"product_ids": args.product_ids, "email_to": args.email}
        values = {
            "name": args.name,
            "plan_id": plan_id,
            "timezone": args.timezone or "UTC",
            "parameters": _given_parameters(stored.parameters if stored else None, given),
        }
        given_columns = {
            "plan_id": args.plan is not None,
            "timezone": args.timezone is not None,
            "parameters": any(value is not None for value in given.values()),
        }
        account_id = _upsert(conn, schema.accounts, values, ["name"], only=[k for k, v in given_columns.items() if v])
        row = conn.execute(
            sa.select(a.timezone, p.name.label("plan"))
            .select_from(schema.accounts.outerjoin(schema.plans, p.id == a.plan_id))
            .where(a.id == account_id)
        ).one()
    print(f"account {account_id} {args.name!r} ({row.timezone}, plan {row.plan or 'none: unlimited'})")
    return 0


def cmd_add_schedule(settings: Settings, args: argparse.Namespace) -> int:
    """Create a schedule with the defaults of the options left out, or update an existing one
    (same account and name) and reactivate it. An existing schedule keeps the stored value of
    every option left out: without --start its slots stay on their day (a weekly one on its
    weekday), without --time/--timezone/--day at their time and day of month."""
    cadence = parse_cadence(args.cadence)
    if args.day is not None and cadence != "monthly":
        raise ScheduleDefinitionError("--day applies to monthly schedules only")
    now = dt.datetime.now(dt.UTC)
    s = schema.report_schedules.c
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
        stored = conn.execute(
            sa.select(schema.report_schedules).where(s.account_id == account_id, s.name == args.name).with_for_update()
        ).one_or_none()
        timezone = args.timezone or (stored.timezone if stored else "UTC")
        try:
            tz = load_timezone(timezone)
        except ScheduleDefinitionError as exc:  # only a stored one can be bad: --timezone was checked
            raise InputError(f"--timezone: the schedule's stored {exc}; give --timezone") from exc
        run_time = args.time or dt.time(6, 0)
        anchor_day = check_anchor_day(args.day)
        start = args.start
        stored_time = None
        if stored is not None:  # the options left out keep the stored schedule's values
            try:
                stored_tz = load_timezone(stored.timezone)
            except ScheduleDefinitionError:  # a malformed schedule being fixed: read its day in the new zone
                stored_tz = tz
            stored_time = stored.run_time or stored.next_run_at.astimezone(stored_tz).time()
            run_time = args.time or stored_time
            if start is None:
                start = slot_day(stored.next_run_at, stored_tz, stored_time)
                if cadence == "monthly":  # from the stored slot's month: an earlier day of it is still ahead
                    start = max(start.replace(day=1), now.astimezone(tz).date())
            if cadence == "monthly" and anchor_day is None:
                anchor_day = check_anchor_day(stored.anchor_day)
        start = start or now.astimezone(tz).date()
        if cadence == "monthly" and anchor_day is None:
            anchor_day = start.day
        unchanged = (
            stored is not None
            and stored.active
            and args.start is None
            and (stored.cadence, stored.timezone, stored_time, stored.anchor_day)
            == (cadence, timezone, run_time, anchor_day)
        )
        if unchanged:  # only its products or recipients change: a slot due now stays due for the tick
            slot = stored.next_run_at
        else:
            first = first_slot(start, cadence, tz, run_time, anchor_day)
            slot = first
            if slot <= now:  # a start in the past: begin at the first future slot, run nothing retroactively
                slot = catch_up(first, now, cadence, tz, run_time=run_time, anchor_day=anchor_day).next_slot
            if stored is not None and stored.active and stored.next_run_at <= now < slot:
                # a slot due now (the tick has not met it yet) stays due if the new schedule has it too
                kept = catch_up(first, stored.next_run_at, cadence, tz, run_time=run_time, anchor_day=anchor_day)
                if kept.due_slot == stored.next_run_at:
                    slot = stored.next_run_at
        given = {"product_ids": args.product_ids, "top_products": args.top_products, "email_to": args.email}
        values = {
            "account_id": account_id,
            "name": args.name,
            "cadence": cadence,
            "timezone": timezone,
            "next_run_at": slot,
            "run_time": run_time,
            "anchor_day": anchor_day,
            "active": True,
            "parameters": _given_parameters(stored.parameters if stored else None, given),
            "last_error": None,
            "updated_at": now,
        }
        schedule_id = _upsert(conn, schema.report_schedules, values, ["account_id", "name"])
    print(
        f"schedule {schedule_id} {args.name!r}: {cadence} at {run_time:%H:%M} {timezone}, "
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
    print(("Dry run (nothing written): " if args.dry_run else "") + result.summary(args.dry_run))
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
