"""The Redis layout the forecast API reads, and the pipelined writes that fill it.

Keys (``forecast`` is ``FORECAST_KEY_PREFIX``):

- ``forecast:{product_id}``: the newest forecast of a product, TTL ``FORECAST_CACHE_TTL``. Written
  through a Lua guard: a backfill of an older as-of date never replaces a newer forecast.
- ``forecast:asof:{YYYY-MM-DD}``: hash of product id -> forecast for one as-of date, so past
  forecasts can be read back; TTL ``FORECAST_HISTORY_TTL``. A rerun replaces it atomically.
- ``forecast:metadata:last_run``: the newest as-of date's run figures (same guard), and
  ``forecast:metadata:{YYYY-MM-DD}`` for every as-of date.
- ``forecast:eligible:{YYYY-MM-DD}``: the eligible-products table handed between steps.

Writes go in pipelined batches: a handful of round trips per run, never one per product.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import redis

BATCH_SIZE = 500

# KEYS: target keys; ARGV[1]: as-of date, ARGV[2]: ttl, ARGV[3..]: one JSON value per key.
# A key is left alone when it already holds a document with a later as_of_date.
_SET_IF_NOT_NEWER = """
local written = 0
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  local current_as_of = current and string.match(current, '"as_of_date"%s*:%s*"([%d%-]+)"')
  if not current_as_of or current_as_of <= ARGV[1] then
    redis.call('SET', key, ARGV[i + 2], 'EX', ARGV[2])
    written = written + 1
  end
end
return written
"""


def forecast_key(prefix: str, product_id: int) -> str:
    return f"{prefix}:{product_id}"


def history_key(prefix: str, as_of: str) -> str:
    return f"{prefix}:asof:{as_of}"


def metadata_key(prefix: str, as_of: str | None = None) -> str:
    return f"{prefix}:metadata:{as_of or 'last_run'}"


def eligible_key(prefix: str, as_of: str) -> str:
    return f"{prefix}:eligible:{as_of}"


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def write_forecasts(
    client: redis.Redis,
    prefix: str,
    as_of: str,
    payloads: Sequence[dict],
    ttl: int,
    history_ttl: int,
    replace_history: bool = True,
) -> dict[str, int]:
    """Cache one as-of date's forecasts. Returns how many latest keys were written and how many
    were kept because they already hold a newer as-of date.

    With ``replace_history`` the as-of hash is rebuilt under a temporary key and renamed over the
    old one, so a rerun leaves exactly this run's forecasts and readers never see a half-written
    hash. Without it (a run for a few products) the products are updated in place.
    """
    guarded_set = client.register_script(_SET_IF_NOT_NEWER)
    encoded = [(p["product_id"], json.dumps(p)) for p in payloads]
    target = history_key(prefix, as_of)
    staging = f"{target}:staging" if replace_history else target
    pipe = client.pipeline(transaction=False)
    if replace_history:
        pipe.delete(staging)
    script_positions = []
    for chunk in _chunks(encoded, BATCH_SIZE):
        pipe.hset(staging, mapping={str(pid): doc for pid, doc in chunk})
        script_positions.append(len(pipe))
        guarded_set(
            keys=[forecast_key(prefix, pid) for pid, _ in chunk],
            args=[as_of, ttl, *(doc for _, doc in chunk)],
            client=pipe,
        )
    results = pipe.execute()
    latest_written = sum(int(results[i]) for i in script_positions)

    finish = client.pipeline(transaction=True)
    if replace_history:
        if encoded:
            finish.rename(staging, target)
        else:
            finish.delete(target)
    if encoded:
        finish.expire(target, history_ttl)
    finish.execute()
    return {"latest_written": latest_written, "latest_kept_newer": len(encoded) - latest_written}


def write_run_metadata(client: redis.Redis, prefix: str, metadata: dict, ttl: int, history_ttl: int) -> bool:
    """Store a run's figures for its as-of date, and as ``last_run`` unless a newer as-of date's
    run is already there. Returns whether ``last_run`` was written."""
    doc = json.dumps(metadata)
    client.set(metadata_key(prefix, metadata["as_of_date"]), doc, ex=history_ttl)
    guarded_set = client.register_script(_SET_IF_NOT_NEWER)
    return bool(guarded_set(keys=[metadata_key(prefix)], args=[metadata["as_of_date"], ttl, doc]))


def read_forecast(client: redis.Redis, prefix: str, product_id: int) -> dict | None:
    raw = client.get(forecast_key(prefix, product_id))
    return json.loads(raw) if raw else None


def read_forecasts_for(client: redis.Redis, prefix: str, as_of: str) -> dict[int, dict]:
    """Every cached forecast of one as-of date, by product id."""
    raw = client.hgetall(history_key(prefix, as_of))
    return {int(pid): json.loads(doc) for pid, doc in raw.items()}


def read_run_metadata(client: redis.Redis, prefix: str, as_of: str | None = None) -> dict | None:
    raw = client.get(metadata_key(prefix, as_of))
    return json.loads(raw) if raw else None
