"""Every Redis key forecast_pipeline reads or writes, built in this one module.

``prefix`` is ``FORECAST_KEY_PREFIX`` (default ``forecast``). What lives under each key, and for
how long, is in the README (*What lands in Redis*).
"""


def forecast_key(prefix: str, product_id: int) -> str:
    return f"{prefix}:{product_id}"


def history_key(prefix: str, as_of: str) -> str:
    return f"{prefix}:asof:{as_of}"


def metadata_key(prefix: str, as_of: str | None = None) -> str:
    return f"{prefix}:metadata:{as_of or 'last_run'}"


def eligible_key(prefix: str, as_of: str) -> str:
    return f"{prefix}:eligible:{as_of}"


def lease_key(prefix: str, as_of: str) -> str:
    return f"{prefix}:lock:asof:{as_of}"


def version_key(prefix: str, as_of: str) -> str:
    """Changes whenever the date's hash is replaced or merged into (streaming readers check it)."""
    return f"{prefix}:version:asof:{as_of}"


def dropped_key(prefix: str, as_of: str) -> str:
    """The products a publish of the date is dropping, kept until their ``forecast:{id}`` are
    removed: a publish killed after its rename leaves them for the next one."""
    return f"{prefix}:dropped:asof:{as_of}"


def published_ids_key(prefix: str, as_of: str) -> str:
    """The ids of every product a publish of the date wrote (comma-separated), kept as long as
    their ``forecast:{id}``: a rerun removes what it drops even after the date's hash expired."""
    return f"{prefix}:ids:asof:{as_of}"


def staging_key(prefix: str, as_of: str, token: str) -> str:
    """The hash a run stages one date's forecasts in before publishing it."""
    return f"{history_key(prefix, as_of)}:staging:{token}"


def staging_pattern(prefix: str, as_of: str) -> str:
    """SCAN pattern of every staging hash of one date (glob characters in the prefix escaped)."""
    escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in history_key(prefix, as_of))
    return f"{escaped}:staging:*"


def steps_key(prefix: str, run_id: str) -> str:
    """One hash per run: the values the forecast's own steps hand to each other."""
    return f"{prefix}:steps:{run_id}"


def report_prefix(prefix: str) -> str:
    """Where the report job caches its figures (``{prefix}:report:figures:...``)."""
    return f"{prefix}:report"


def history_pattern(prefix: str) -> str:
    """SCAN pattern of the per-date hashes (it also matches their staging hashes: check the date)."""
    return history_key(prefix, "*")


def date_of_history_key(prefix: str, key: str) -> str:
    """The as-of part of a per-date hash's key (not a date for a staging hash)."""
    return key[len(history_key(prefix, "")) :]
