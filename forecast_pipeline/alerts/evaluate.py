"""Pure alert evaluation: operators, value extraction, staleness, the decision per alert, and the
statistics of one evaluation. No database here: :mod:`forecast_pipeline.alerts.store` reads the
rows and applies the decisions.

Per enabled alert (as the legacy worker): the source must exist and be active; its latest reading
of the alert's metric must be fresh (polling sources only: within ``ALERT_FRESHNESS_SECONDS``);
the number is taken from ``value``, or from ``json_value``/``metadata`` along the alert's path;
it is compared with the threshold; an event is created when the condition holds and none is open,
and the open event is resolved when it no longer holds.
"""

from __future__ import annotations

import datetime as dt
import math
import operator as op
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

AGE_PATH = "$age"
"""Value path meaning "seconds since the reading was taken" (e.g. the age of the last forecast run)."""


class AlertEvaluationError(ValueError):
    """This alert cannot be evaluated (missing source, bad path, non-numeric value, ...)."""


# Exact comparisons: a tolerance would make 1e10 + 5 > 1e10 false. Python compares a whole number
# with a float exactly, so integers from JSON keep every digit.
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": op.gt,
    "<": op.lt,
    "==": op.eq,
    ">=": op.ge,
    "<=": op.le,
    "!=": op.ne,
}


def evaluate_threshold(value: float, operator: str, threshold: float) -> bool:
    """Whether ``value <operator> threshold`` holds, i.e. the alert condition is met."""
    try:
        compare = OPERATORS[operator]
    except KeyError:
        raise AlertEvaluationError(f"unknown operator {operator!r} (expected one of {' '.join(OPERATORS)})") from None
    return compare(value, threshold)


@dataclass(frozen=True)
class Reading:
    id: int
    metric: str
    value: float | None
    json_value: Any
    metadata: Any
    timestamp: dt.datetime


@dataclass(frozen=True)
class Source:
    id: int
    name: str
    is_active: bool
    poll_enabled: bool


@dataclass(frozen=True)
class Alert:
    id: int
    device_id: int
    metric: str
    operator: str
    threshold_value: float
    value_path: str | None = None
    name: str | None = None


def to_number(raw: Any, where: str) -> float | int:
    """A finite number from a reading's field; booleans count as 1/0, numeric strings are parsed,
    whole numbers stay exact."""
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int):
        try:
            float(raw)
        except OverflowError:
            raise AlertEvaluationError(f"{where} is too large: {str(raw)[:40]}...") from None
        return raw
    if isinstance(raw, float):
        number = raw
    elif isinstance(raw, str):
        try:
            whole = int(raw.strip())
        except ValueError:
            whole = None
        if whole is not None:  # a whole number keeps every digit, as it does in JSON
            return to_number(whole, where)
        try:
            number = float(raw.strip())
        except ValueError:
            raise AlertEvaluationError(f"{where} is not numeric: {raw[:80]!r}") from None
    elif raw is None:
        raise AlertEvaluationError(f"{where} is empty")
    else:
        raise AlertEvaluationError(f"{where} is not numeric: {type(raw).__name__}")
    if not math.isfinite(number):
        raise AlertEvaluationError(f"{where} is not a finite number: {number}")
    return number


def _walk(document: Any, segments: list[str], where: str) -> Any:
    current = document
    for depth, segment in enumerate(segments):
        here = ".".join([where, *segments[: depth + 1]])
        if isinstance(current, dict):
            if segment not in current:
                raise AlertEvaluationError(f"path {here} not found in the reading")
            current = current[segment]
        elif isinstance(current, list):
            try:
                current = current[int(segment)]
            except (ValueError, IndexError):
                raise AlertEvaluationError(f"path {here}: no list item {segment!r}") from None
        else:
            raise AlertEvaluationError(f"path {here}: cannot look inside a {type(current).__name__}")
    return current


def extract_value(reading: Reading, path: str | None, now: dt.datetime) -> float:
    """The alert's number from a reading.

    ``path`` is ``None`` (the ``value`` column, else a plain number in ``json_value``),
    ``"a.b.0"`` or ``"json_value.a.b.0"`` (into ``json_value``), ``"metadata.a"`` (into
    ``metadata``) or ``"$age"`` (seconds since the reading was taken, at ``now``).
    """
    path = (path or "").strip()
    if path == AGE_PATH:
        return max(0.0, (now - reading.timestamp).total_seconds())
    if not path:
        if reading.value is not None:
            return to_number(reading.value, "value")
        if reading.json_value is not None and not isinstance(reading.json_value, dict | list):
            return to_number(reading.json_value, "json_value")
        raise AlertEvaluationError(
            "reading has no numeric value (set the alert's value_path into json_value or metadata)"
        )
    segments = path.split(".")
    if any(s == "" for s in segments):
        raise AlertEvaluationError(f"bad path {path!r} (expected dotted keys such as json_value.a.b)")
    if segments[0] == "metadata":
        document, where, segments = reading.metadata, "metadata", segments[1:]
    elif segments[0] == "json_value":
        document, where, segments = reading.json_value, "json_value", segments[1:]
    else:
        document, where = reading.json_value, "json_value"
    if not segments:
        return to_number(document, where)
    if document is None:
        raise AlertEvaluationError(f"path {path!r}: the reading's {where} is empty")
    return to_number(_walk(document, segments, where), f"{where}.{'.'.join(segments)}")


def is_stale(reading_time: dt.datetime, now: dt.datetime, freshness_seconds: float) -> bool:
    """A reading is stale when taken more than ``freshness_seconds`` before ``now``."""
    return (now - reading_time).total_seconds() > freshness_seconds


TRIGGER, RESOLVE, STILL_OPEN, NORMAL, SKIP, ERROR = "trigger", "resolve", "still_open", "normal", "skip", "error"


@dataclass(frozen=True)
class Decision:
    """What to do for one alert. ``value`` is set whenever the alert was evaluated."""

    alert_id: int
    action: str
    value: float | None = None
    message: str = ""
    reading_id: int | None = None

    @property
    def evaluated(self) -> bool:
        return self.action in (TRIGGER, RESOLVE, STILL_OPEN, NORMAL)


def decide(
    alert: Alert,
    source: Source | None,
    reading: Reading | None,
    has_open_event: bool,
    now: dt.datetime,
    freshness_seconds: float,
) -> Decision:
    """The decision for one alert. Never raises: a bad alert becomes an ``error`` decision."""
    if source is None:
        return Decision(alert.id, ERROR, message=f"source {alert.device_id} does not exist")
    if not source.is_active:
        return Decision(alert.id, SKIP, message=f"source {source.name!r} is inactive")
    if alert.operator not in OPERATORS:
        return Decision(alert.id, ERROR, message=f"unknown operator {alert.operator!r}")
    if not math.isfinite(alert.threshold_value):  # a row from before ck_alerts_threshold_finite
        return Decision(alert.id, ERROR, message=f"threshold {alert.threshold_value} is not a finite number")
    if reading is None:
        return Decision(alert.id, SKIP, message=f"no {alert.metric!r} reading from {source.name!r}")
    age_alert = (alert.value_path or "").strip() == AGE_PATH
    if source.poll_enabled and not age_alert and is_stale(reading.timestamp, now, freshness_seconds):
        age = (now - reading.timestamp).total_seconds()
        return Decision(
            alert.id,
            SKIP,
            message=f"latest {alert.metric!r} reading is {age:.0f}s old (stale after {freshness_seconds:g}s)",
            reading_id=reading.id,
        )
    try:
        value = extract_value(reading, alert.value_path, now)
    except AlertEvaluationError as exc:
        return Decision(alert.id, ERROR, message=str(exc), reading_id=reading.id)
    condition = f"{_number(value)} {alert.operator} {_number(alert.threshold_value)}"
    if evaluate_threshold(value, alert.operator, alert.threshold_value):
        if has_open_event:
            return Decision(alert.id, STILL_OPEN, value, f"still {condition}", reading.id)
        return Decision(alert.id, TRIGGER, value, f"threshold crossed: {condition}", reading.id)
    if has_open_event:
        return Decision(alert.id, RESOLVE, value, f"back to normal: not {condition}", reading.id)
    return Decision(alert.id, NORMAL, value, f"not {condition}", reading.id)


def _number(value: float) -> str:
    """Every digit the comparison used, none more: 1200.004, not 1200 (six significant digits
    made "1200 > 1200" of a value just above its threshold); 82, not 82.0."""
    text = repr(float(value))
    return text.removesuffix(".0")


@dataclass
class EvaluationStats:
    """Figures of one evaluation, as the legacy worker logged them."""

    total: int = 0
    evaluated: int = 0
    triggered: int = 0
    resolved: int = 0
    errors: int = 0
    skipped: int = 0
    future_readings: int = 0
    """Readings dated beyond the clock skew, ignored (their sources' clocks are wrong)."""
    closed_disabled: int = 0
    """Open events closed because their alert was disabled or changed, or its source made inactive
    (nothing would ever resolve them otherwise)."""
    notifications_sent: int = 0
    notifications_failed: int = 0
    notifications_dead_lettered: int = 0
    notifications_pending: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list, repr=False)

    def count(self, decision: Decision, applied: bool = True) -> None:
        """Count a decision. ``applied`` is False when another evaluator got there first."""
        self.total += 1
        if decision.evaluated:
            self.evaluated += 1
        if decision.action == TRIGGER and applied:
            self.triggered += 1
        elif decision.action == RESOLVE and applied:
            self.resolved += 1
        elif decision.action == ERROR:
            self.errors += 1
        elif decision.action == SKIP:
            self.skipped += 1

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("messages")
        data["seconds"] = round(self.seconds, 3)
        return data

    def summary(self) -> str:
        s = self
        text = (
            f"{s.total} alerts: {s.evaluated} evaluated, {s.triggered} triggered, {s.resolved} resolved, "
            f"{s.errors} errors, {s.skipped} skipped"
        )
        if s.future_readings:
            text += f", {s.future_readings} future readings ignored"
        if s.closed_disabled:
            text += f", {s.closed_disabled} open event(s) closed (alert disabled or changed, or source inactive)"
        if s.notifications_sent or s.notifications_failed or s.notifications_pending or s.notifications_dead_lettered:
            text += (
                f"; notifications {s.notifications_sent} sent, {s.notifications_failed} failed, "
                f"{s.notifications_dead_lettered} dead-lettered, {s.notifications_pending} pending"
            )
        return text + f" ({s.seconds:.2f}s)"
