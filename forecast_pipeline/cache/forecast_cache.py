"""The Redis layout the forecast API reads, and the pipelined writes that fill it.

Keys (``forecast`` is ``FORECAST_KEY_PREFIX``):

- ``forecast:{product_id}``: the newest forecast of a product, TTL ``FORECAST_CACHE_TTL``. Written
  through a Lua guard: a backfill of an older as-of date never replaces a newer forecast.
- ``forecast:asof:{YYYY-MM-DD}``: hash of product id -> forecast for one as-of date, so past
  forecasts can be read back; TTL ``FORECAST_HISTORY_TTL``. A rerun replaces it atomically.
- ``forecast:metadata:last_run``: the newest as-of date's run figures (same guard), and
  ``forecast:metadata:{YYYY-MM-DD}`` for every as-of date.
- ``forecast:eligible:{YYYY-MM-DD}``: the eligible-products table handed between steps.
- ``forecast:ids:asof:{YYYY-MM-DD}`` and ``forecast:dropped:asof:{YYYY-MM-DD}``: the products the
  date's publishes wrote and dropped, kept as long as their ``forecast:{id}``: what a rerun removes.
- ``forecast:lock:asof:{YYYY-MM-DD}``: the lease of the run publishing that date, and
  ``forecast:asof:{YYYY-MM-DD}:staging:{token}``: that run's hash while it is being written.

Publishing a date, in this order:

1. each shard step of the run writes its products into the run's staging hash
   (``...:staging:{run_id}``, :func:`stage_forecasts`), without the lease, each batch in MULTI with
   its EXPIRE, so no key ever exists without a TTL; nobody reads it;
2. the run's one publish step (:func:`publish_staged`) takes the date's lease (runs of one date
   publish one after the other; a dead run's lease expires after ``LEASE_SECONDS``) and records
   the date's ids and what it drops (what a later rerun removes, should this one be killed);
3. one Lua call checks the lease is still ours and the staging hash is complete, and renames it
   over the date's hash: readers see the old hash or the new one, never a part;
4. ``forecast:{id}`` are copied from that hash on the server (guarded: never over a later date;
   the documents never travel twice), and those of products the run no longer forecasts dropped;
5. the run metadata is written (``last_run`` last), so it never names an unfinished publish.

Every script after step 3 checks the lease first (``_FENCE``): a publisher stalled past it never
writes over the run that took the date over. :func:`write_forecasts` does 1-5 at once for a caller
that holds every forecast already.

Writes go in pipelined batches: a handful of round trips per thousand products, never one each.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np
import redis

from forecast_pipeline.cache.keys import (
    dropped_key,
    forecast_key,
    history_key,
    lease_key,
    metadata_key,
    published_ids_key,
    staging_key,
    staging_pattern,
    version_key,
)

BATCH_SIZE = 500
GROUP_SIZE = 10 * BATCH_SIZE  # products per MULTI; the lease is renewed between groups
LEASE_SECONDS = 30
LEASE_WAIT_SECONDS = 900
STAGING_TTL_SECONDS = 3600

# Every write after a date's publish script checks first that the lease is still this run's: a
# publisher stalled past it (a paused VM, a starved pod) must not write over the run that took over.
# KEYS[1]: the lease, ARGV[1]: the run's lease token.
_FENCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('PUBLISH lease lost: another run took over this as-of date')
end
"""

# KEYS[1]: the lease, KEYS[2..]: latest keys; ARGV[1]: lease token, ARGV[2]: as-of date. Deletes
# the keys that hold exactly that date.
_DELETE_IF_AS_OF = (
    _FENCE
    + """
local removed = 0
for i = 2, #KEYS do
  local key = KEYS[i]
  local current = redis.call('GET', key)
  if current and string.match(current, '"as_of_date"%s*:%s*"([%d%-]+)"') == ARGV[2] then
    redis.call('DEL', key)
    removed = removed + 1
  end
end
return removed
"""
)

# KEYS[1]: the lease, KEYS[2..]: keys to delete; ARGV[1]: lease token.
_DELETE_HOLDING = _FENCE + "return redis.call('DEL', unpack(KEYS, 2))"

# KEYS[1]: the lease, KEYS[2]: the date's figures, KEYS[3]: last_run; ARGV[1]: lease token,
# ARGV[2]: the figures (JSON), ARGV[3]: as-of date, ARGV[4]: ttl, ARGV[5]: history ttl. last_run
# is left alone when it holds a later as-of date; returns whether it was written. _FIGURES alone
# (no lease to hold) does not read KEYS[1] or ARGV[1].
_FIGURES = """
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[5])
local current = redis.call('GET', KEYS[3])
local current_as_of = current and string.match(current, '"as_of_date"%s*:%s*"([%d%-]+)"')
if not current_as_of or current_as_of <= ARGV[3] then
  redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[4])
  return 1
end
return 0
"""
_FENCED_FIGURES = _FENCE + _FIGURES

# The start both publishing scripts share: the lease must still be this run's (else nothing is
# written), the date's version changes (streaming readers notice), `expected` is the staged count.
_HOLD_LEASE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('PUBLISH lease lost: another run took over this as-of date')
end
redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[3])
local expected = tonumber(ARGV[2])
"""
_CHECK_STAGED = """local staged = redis.call('HLEN', KEYS[1])
if staged ~= expected then
  return redis.error_reply('PUBLISH staging hash holds ' .. staged .. ' of ' .. expected .. ' forecasts')
end
"""

# KEYS[1]: staging hash, KEYS[2]: the date's hash, KEYS[3]: the lease, KEYS[4]: the hash's version.
# ARGV[1]: lease token, ARGV[2]: expected fields, ARGV[3]: history ttl.
_PUBLISH = (
    _HOLD_LEASE
    + """
if expected == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 0
end
"""
    + _CHECK_STAGED
    + """
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return staged
"""
)


# KEYS[1]: the lease, KEYS[2]: the date's hash, KEYS[3..]: latest keys; ARGV[1]: lease token,
# ARGV[2]: as-of date, ARGV[3]: ttl, ARGV[4..]: the hash field (product id) of each latest key.
# Copies each product's document from the hash into its latest key unless that holds a later
# as_of_date.
_SET_LATEST_FROM_HASH = (
    _FENCE
    + """
local written = 0
for i = 3, #KEYS do
  local doc = redis.call('HGET', KEYS[2], ARGV[i + 1])
  if doc then
    local current = redis.call('GET', KEYS[i])
    local current_as_of = current and string.match(current, '"as_of_date"%s*:%s*"([%d%-]+)"')
    if not current_as_of or current_as_of <= ARGV[2] then
      redis.call('SET', KEYS[i], doc, 'EX', ARGV[3])
      written = written + 1
    end
  end
end
return written
"""
)

# KEYS[1]: staging hash, KEYS[2]: the date's hash, KEYS[3]: the lease, KEYS[4]: the hash's version,
# KEYS[5]: the date's run figures. ARGV[1]: lease token, ARGV[2]: expected fields, ARGV[3]: history
# ttl, ARGV[4..]: products to drop. A run for some products: their staged forecasts join the date's
# hash (which keeps the others), and the requested products it did not forecast leave it, in the
# script that changes the version. Where the hash has gone (expired: before its figures, whose TTL
# starts later), the figures go too: they describe a full run's hash, not the few products merged.
_MERGE = (
    _HOLD_LEASE
    + _CHECK_STAGED
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[5])
end
if expected > 0 then
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 1000 do
    redis.call('HSET', KEYS[2], unpack(fields, i, math.min(i + 999, #fields)))
  end
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
for i = 4, #ARGV, 1000 do
  redis.call('HDEL', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('DEL', KEYS[1])
return staged
"""
)


class PublishError(RuntimeError):
    """A date could not be published as a whole (lease not obtained or lost, hash incomplete)."""


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
    drop_products: Sequence[int] = (),
    lock_seconds: int = LEASE_SECONDS,
    wait_seconds: float = LEASE_WAIT_SECONDS,
    on_wait: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Publish one as-of date's forecasts at once: one shard's :func:`stage_forecasts` and
    :func:`publish_staged` (the path a run takes), for callers that hold every forecast already.

    With ``replace_history`` the date's hash becomes exactly these forecasts, and products that
    were in it but are not any more lose ``forecast:{id}`` if it holds this date. Without it (a
    run for some products) these products are updated in place and ``drop_products`` (requested
    but not forecast this time) are removed. Returns how many latest keys were written, kept
    because they hold a newer date, and removed. Raises :class:`PublishError` or a Redis error
    when the date could not be published; nothing of this call is visible then (its staging hash
    is deleted). ``on_wait`` is told when another run holds the date's lease.
    """
    token = uuid.uuid4().hex
    ids = np.asarray([int(p["product_id"]) for p in payloads], dtype=np.int64)
    try:
        stage_forecasts(client, prefix, as_of, token, payloads, ids.tolist())
    except BaseException:
        delete_staging(client, prefix, as_of, token)  # DEL is allowed even when Redis is out of memory
        raise
    return publish_staged(
        client,
        prefix,
        as_of,
        token,
        ids,
        ttl,
        history_ttl,
        replace_history=replace_history,
        drop_products=drop_products,
        lock_seconds=lock_seconds,
        wait_seconds=wait_seconds,
        on_wait=on_wait,
    )


@contextlib.contextmanager
def _date_lease(
    client: redis.Redis,
    prefix: str,
    as_of: str,
    token: str,
    lock_seconds: int,
    wait_seconds: float,
    on_wait: Callable[[str], None] | None,
) -> Iterator[redis.lock.Lock]:
    """Hold the date's publish lease for the block (waiting up to ``wait_seconds`` for another
    run's, telling ``on_wait``); released however the block ends."""
    lease = client.lock(lease_key(prefix, as_of), timeout=lock_seconds, blocking_timeout=wait_seconds)
    acquired = lease.acquire(token=token, blocking=False)
    if not acquired:
        if on_wait is not None:
            on_wait(f"Another run is publishing as-of {as_of}: waiting up to {wait_seconds:.0f}s for it to finish")
        acquired = lease.acquire(token=token)
    if not acquired:
        raise PublishError(
            f"Another run has been publishing as-of {as_of} for over {wait_seconds:.0f}s "
            f"(lease {lease_key(prefix, as_of)}); retry when it has finished"
        )
    try:
        yield lease
    finally:
        # a lease that expired meanwhile: the publish already failed on it, or had finished
        with contextlib.suppress(redis.exceptions.LockError):
            lease.release()


def stage_forecasts(
    client: redis.Redis,
    prefix: str,
    as_of: str,
    run_token: str,
    payloads: Sequence[dict],
    shard_products: Sequence[int],
) -> int:
    """Write one shard's forecasts into the run's staging hash of the date (no lease: the hash
    is the run's own and nobody reads it). A retried shard first removes every product of its
    shard, so the hash then holds exactly the forecasts of the shard's last attempt. Each batch
    goes in MULTI with the hash's EXPIRE (``STAGING_TTL_SECONDS``, renewed by every shard).
    Returns how many forecasts were staged."""
    key = staging_key(prefix, as_of, run_token)
    ids = [str(int(p)) for p in shard_products]
    pipe = client.pipeline(transaction=True)
    for chunk in _chunks(ids, BATCH_SIZE):
        pipe.hdel(key, *chunk)
    pipe.execute()
    encoded = [(p["product_id"], json.dumps(p)) for p in payloads]
    for group in _chunks(encoded, GROUP_SIZE):
        pipe = client.pipeline(transaction=True)
        for chunk in _chunks(group, BATCH_SIZE):
            pipe.hset(key, mapping={str(pid): doc for pid, doc in chunk})
        pipe.expire(key, STAGING_TTL_SECONDS)
        pipe.execute()
    return len(encoded)


def staging_tokens(client: redis.Redis, prefix: str, as_of: str) -> list[str]:
    """The tokens (run ids) of every staging hash of the date."""
    marker = staging_key(prefix, as_of, "")
    return [k.removeprefix(marker) for k in client.scan_iter(match=staging_pattern(prefix, as_of), count=1000)]


def delete_staging(client: redis.Redis, prefix: str, as_of: str, run_token: str) -> None:
    client.delete(staging_key(prefix, as_of, run_token))


def publish_staged(
    client: redis.Redis,
    prefix: str,
    as_of: str,
    run_token: str,
    product_ids: np.ndarray,
    ttl: int,
    history_ttl: int,
    replace_history: bool = True,
    drop_products: Sequence[int] = (),
    lock_seconds: int = LEASE_SECONDS,
    wait_seconds: float = LEASE_WAIT_SECONDS,
    on_wait: Callable[[str], None] | None = None,
    run_metadata: Callable[[], dict] | None = None,
) -> dict[str, int]:
    """Publish what the run's shards staged for the date: ``product_ids`` are the products they
    staged (the hash must hold exactly that many). Same guarantees and return value as
    :func:`write_forecasts`; the staging hash is deleted if the publish fails. ``run_metadata()``
    gives the run's figures, written (:func:`write_run_metadata`) before the lease is released,
    so that another run of the date cannot publish between the forecasts and their figures; then
    the result also says whether ``last_run`` was written (``last_run_updated``, 0 or 1)."""
    ids = np.asarray(product_ids, dtype=np.int64)
    token = uuid.uuid4().hex
    staging, target = staging_key(prefix, as_of, run_token), history_key(prefix, as_of)
    try:
        with _date_lease(client, prefix, as_of, token, lock_seconds, wait_seconds, on_wait) as lease:
            if replace_history:
                dropped = np.setdiff1d(_previously_published(client, prefix, as_of), ids).tolist()
                # before the rename: a publish killed after it leaves both records to the next one
                _record_publish(client, prefix, as_of, ids, dropped, max(ttl, history_ttl), replace=True)
                client.register_script(_PUBLISH)(
                    keys=[staging, target, lease.name, version_key(prefix, as_of)], args=[token, len(ids), history_ttl]
                )
            else:
                dropped = sorted(set(int(p) for p in drop_products) - set(ids.tolist()))
                _record_publish(client, prefix, as_of, ids, [], max(ttl, history_ttl), replace=False)
                client.register_script(_MERGE)(
                    keys=[staging, target, lease.name, version_key(prefix, as_of), metadata_key(prefix, as_of)],
                    args=[token, len(ids), history_ttl, *(str(pid) for pid in dropped)],
                )
            written = _write_latest_from_hash(client, prefix, as_of, ids, ttl, lease, token)
            removed = _remove_latest(client, prefix, as_of, dropped, lease, token)
            if replace_history:
                client.register_script(_DELETE_HOLDING)(keys=[lease.name, dropped_key(prefix, as_of)], args=[token])
            figures = {}
            if run_metadata is not None:
                lease.reacquire()  # the fence below still checks it in the same script as the writes
                updated = write_run_metadata(client, prefix, run_metadata(), ttl, history_ttl, (lease.name, token))
                figures["last_run_updated"] = int(updated)
    except BaseException:
        # after the publish script the staging hash is gone (renamed), so this only frees a
        # staging hash that was not published; DEL is allowed even when Redis is out of memory
        client.delete(staging)
        raise
    return {"latest_written": written, "latest_kept_newer": len(ids) - written, "latest_removed": removed, **figures}


def _previously_published(client: redis.Redis, prefix: str, as_of: str) -> np.ndarray:
    """Every product whose ``forecast:{id}`` may hold the date: those of its hash, those the
    publishes recorded (the hash can expire first), and those a publish dropped but did not get to
    remove (killed after its rename: the hash no longer names them)."""
    pipe = client.pipeline(transaction=False)
    pipe.hkeys(history_key(prefix, as_of))
    pipe.smembers(dropped_key(prefix, as_of))
    pipe.get(published_ids_key(prefix, as_of))
    in_hash, dropped, recorded = pipe.execute()
    parts = [
        np.asarray([int(p) for p in in_hash], dtype=np.int64),
        np.asarray([int(p) for p in dropped], dtype=np.int64),
    ]
    parts.append(_recorded_ids(recorded))
    return np.unique(np.concatenate(parts))


def _recorded_ids(recorded: str | None) -> np.ndarray:
    """The ids in ``forecast:ids:asof:{date}`` (comma-separated; a run for some products appends
    ",id,id", so the string may start with a comma)."""
    text = (recorded or "").strip(",")
    return np.asarray(text.split(",") if text else [], dtype=np.int64)


def _record_publish(
    client: redis.Redis,
    prefix: str,
    as_of: str,
    ids: np.ndarray,
    dropped: Sequence[int],
    ttl: int,
    *,
    replace: bool,
) -> None:
    """Record what this publish writes (the date's ids: replaced by a full run, added to by a run
    for some products) and drops (added to any earlier record: a publish that failed after its
    record must not erase what a killed one left to remove), each kept ``ttl``."""
    ids_key, drop_key = published_ids_key(prefix, as_of), dropped_key(prefix, as_of)
    written = ",".join(map(str, ids.tolist()))
    pipe = client.pipeline(transaction=True)
    if replace:
        pipe.set(ids_key, written, ex=ttl)
    elif written:
        pipe.append(ids_key, "," + written)
        pipe.expire(ids_key, ttl)
    for chunk in _chunks([str(int(p)) for p in dropped], BATCH_SIZE):
        pipe.sadd(drop_key, *chunk)
    if dropped:
        pipe.expire(drop_key, ttl)
    pipe.execute()


def _write_latest_from_hash(
    client: redis.Redis,
    prefix: str,
    as_of: str,
    product_ids: np.ndarray,
    ttl: int,
    lease: redis.lock.Lock,
    token: str,
) -> int:
    """``forecast:{id}`` of each product from the date's hash, on the server, guarded against
    replacing a later as-of date's forecast."""
    script = client.register_script(_SET_LATEST_FROM_HASH)
    target = history_key(prefix, as_of)
    written = 0
    for group in _chunks(product_ids, GROUP_SIZE):
        pipe = client.pipeline(transaction=False)
        for chunk in _chunks(group, BATCH_SIZE):
            fields = [str(int(p)) for p in chunk]
            script(
                keys=[lease.name, target, *(forecast_key(prefix, f) for f in fields)],
                args=[token, as_of, ttl, *fields],
                client=pipe,
            )
        written += sum(int(n) for n in pipe.execute())
        lease.reacquire()
    return written


def _remove_latest(
    client: redis.Redis, prefix: str, as_of: str, product_ids: Sequence[int], lease: redis.lock.Lock, token: str
) -> int:
    """Delete ``forecast:{id}`` of these products where it still holds this date's forecast."""
    delete_if_as_of = client.register_script(_DELETE_IF_AS_OF)
    pipe = client.pipeline(transaction=False)
    for chunk in _chunks(list(product_ids), BATCH_SIZE):
        keys = [lease.name, *(forecast_key(prefix, pid) for pid in chunk)]
        delete_if_as_of(keys=keys, args=[token, as_of], client=pipe)
    return sum(int(n) for n in pipe.execute())


def write_run_metadata(
    client: redis.Redis,
    prefix: str,
    metadata: dict,
    ttl: int,
    history_ttl: int,
    lease: tuple[str, str] | None = None,
) -> bool:
    """Store a run's figures for its as-of date, and as ``last_run`` unless a newer as-of date's
    run is already there, in one script; given the date's ``lease`` (key, token), only while this
    run holds it. Returns whether ``last_run`` was written."""
    as_of = metadata["as_of_date"]
    lease_name, token = lease or ("", "")
    keys = [lease_name or metadata_key(prefix), metadata_key(prefix, as_of), metadata_key(prefix)]
    script = client.register_script(_FENCED_FIGURES if lease else _FIGURES)
    return bool(script(keys=keys, args=[token, json.dumps(metadata), as_of, ttl, history_ttl]))


def read_forecast(client: redis.Redis, prefix: str, product_id: int) -> dict | None:
    raw = client.get(forecast_key(prefix, product_id))
    return json.loads(raw) if raw else None


def read_forecasts_for(client: redis.Redis, prefix: str, as_of: str) -> dict[int, dict]:
    """Every cached forecast of one as-of date, by product id."""
    raw = client.hgetall(history_key(prefix, as_of))
    return {int(pid): json.loads(doc) for pid, doc in raw.items()}


class ChangedWhileReading(RuntimeError):
    """Another run published the date while its hash was being read in batches."""


T = TypeVar("T")


def read_consistently(consume: Callable[[], T], on_retry: Callable[[str], object], attempts: int = 3) -> T:
    """``consume()`` (which streams a :class:`CachedForecasts`) again when another run published the
    date meanwhile: what it returns then comes from one publish, the newest. Raises
    :class:`ChangedWhileReading` if the date keeps changing."""
    for attempt in range(1, attempts + 1):
        try:
            return consume()
        except ChangedWhileReading as exc:
            if attempt == attempts:
                raise
            on_retry(f"{exc}: reading it again")
    raise AssertionError("unreachable")


class CachedForecasts(Mapping):
    """One date's cached forecasts, read in batches (HSCAN) instead of all at once: a million
    forecasts are ~1.5 GB of JSON. ``items()``/``values()`` stream; when another run publishes the
    date meanwhile (the hash's version changes) they raise :class:`ChangedWhileReading` at the
    end instead of having yielded a mix of two runs. Duplicates HSCAN may return are dropped."""

    def __init__(self, client: redis.Redis, prefix: str, as_of: str, batch: int = 1000):
        self.client, self.prefix, self.as_of, self.batch = client, prefix, as_of, batch
        self.key = history_key(prefix, as_of)

    def __getitem__(self, product_id: int) -> dict:
        raw = self.client.hget(self.key, str(product_id))
        if raw is None:
            raise KeyError(product_id)
        return json.loads(raw)

    def __len__(self) -> int:
        return self.client.hlen(self.key)

    def published(self) -> bool:
        """Whether the date's forecasts are in Redis as a full run published them: its run figures
        (``forecast:metadata:{date}``, written by full runs only, after the hash) are there, and so
        is its hash unless they say it published none (Redis keeps no empty hash). False once
        ``FORECAST_HISTORY_TTL`` has expired them (an empty read is not "nothing forecast"), and
        where only a run for some products has written the date since (its hash holds just them)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.exists(self.key)
        pipe.get(metadata_key(self.prefix, self.as_of))
        exists, raw = pipe.execute()
        return raw is not None and (bool(exists) or json.loads(raw).get("successful") == 0)

    def __iter__(self):
        for product_id, _ in self.items():
            yield product_id

    def items(self):
        version = self.client.get(version_key(self.prefix, self.as_of))
        seen: set[int] = set()
        for field, raw in self.client.hscan_iter(self.key, count=self.batch):
            product_id = int(field)
            if product_id not in seen:
                seen.add(product_id)
                yield product_id, json.loads(raw)
        if self.client.get(version_key(self.prefix, self.as_of)) != version:
            raise ChangedWhileReading(f"another run published as-of {self.as_of} while {self.key} was being read")

    def values(self):
        for _, doc in self.items():
            yield doc


def published_count(client: redis.Redis, prefix: str, as_of: str) -> int:
    """How many forecasts of the date its publishes left (its hash, or the ids they recorded once
    the hash has expired)."""
    in_hash = client.hlen(history_key(prefix, as_of))
    if in_hash:
        return int(in_hash)
    return len(_recorded_ids(client.get(published_ids_key(prefix, as_of))))


def read_run_metadata(client: redis.Redis, prefix: str, as_of: str | None = None) -> dict | None:
    raw = client.get(metadata_key(prefix, as_of))
    return json.loads(raw) if raw else None
