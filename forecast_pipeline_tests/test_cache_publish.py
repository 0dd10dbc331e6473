"""Publishing one as-of date to Redis when runs race, die or run out of memory, on real Redis
servers (a private one where the test must stop it, fill it or give it a password)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis

from forecast_pipeline.cache import forecast_cache, keys
from forecast_pipeline_tests.conftest import REDIS_URL, private_redis

AS_OF = "2025-11-10"
PREFIX = "forecast"
pytestmark = pytest.mark.integration


def payloads(n: int, marker: str, size: int = 400) -> list[dict]:
    return [{"product_id": i, "as_of_date": AS_OF, "marker": marker, "pad": "x" * size} for i in range(n)]


def keys_without_ttl(client: redis.Redis) -> list[str]:
    return [k for k in client.scan_iter("*", count=1000) if client.ttl(k) == -1]


def staging_keys(client: redis.Redis) -> list[str]:
    return list(client.scan_iter(f"{keys.history_key(PREFIX, AS_OF)}:*"))


def _write_at_once(barrier: threading.Barrier, outcomes: dict[str, str], marker: str, n: int) -> None:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    docs = payloads(n, marker, size=50)
    barrier.wait()
    try:
        forecast_cache.write_forecasts(client, PREFIX, AS_OF, docs, 600, 600, on_wait=WAITS.append)
        outcomes[marker] = "ok"
    except Exception as exc:  # noqa: BLE001 - the test reports what each writer saw
        outcomes[marker] = repr(exc)
    finally:
        client.close()


WAITS: list[str] = []


def test_two_writers_of_one_date_leave_one_complete_hash(redis_client):
    n = 20_000
    WAITS.clear()
    for trial in range(3):
        redis_client.flushdb()
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}
        threads = [threading.Thread(target=_write_at_once, args=(barrier, outcomes, m, n)) for m in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes == {"a": "ok", "b": "ok"}, f"trial {trial}"
        published = forecast_cache.read_forecasts_for(redis_client, PREFIX, AS_OF)
        assert len(published) == n, f"trial {trial}: {len(published)} of {n} published"
        assert len({doc["marker"] for doc in published.values()}) == 1  # one run's hash, not a mix
        assert not staging_keys(redis_client)
        assert not keys_without_ttl(redis_client)
    assert WAITS and WAITS[0].startswith(f"Another run is publishing as-of {AS_OF}: waiting")


WRITER = textwrap.dedent(
    """
    import sys, time, redis
    from forecast_pipeline.cache import forecast_cache
    url, n = sys.argv[1], int(sys.argv[2])
    execute = redis.client.Pipeline.execute
    def slow_execute(self, *args, **kwargs):  # a slow network, so the kill lands mid-write
        time.sleep(0.05)
        return execute(self, *args, **kwargs)
    redis.client.Pipeline.execute = slow_execute
    client = redis.Redis.from_url(url, decode_responses=True)
    docs = [{"product_id": i, "as_of_date": "2025-11-10", "pad": "x" * 400} for i in range(n)]
    forecast_cache.write_forecasts(client, "forecast", "2025-11-10", docs, 600, 600, lock_seconds=2)
    forecast_cache.write_run_metadata(client, "forecast", {"as_of_date": "2025-11-10"}, 600, 600)
    """
)


def _kill_mid_write(url: str, n: int) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, str(n)], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            staged = [k for k in staging_keys(client) if client.type(k) == "hash" and client.hlen(k) >= n // 3]
            if staged:
                break
            assert writer.poll() is None, "the writer finished before it could be killed"
            time.sleep(0.002)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    finally:
        client.close()


def test_a_writer_killed_mid_write_leaves_nothing_without_a_ttl_and_a_rerun_heals_near_maxmemory():
    n = 60_000
    with private_redis("--maxmemory-policy", "noeviction") as (url, _):
        client = redis.Redis.from_url(url, decode_responses=True)
        base = client.info("memory")["used_memory"]
        forecast_cache.write_forecasts(client, "calibration", AS_OF, payloads(n, "c"), 600, 600)
        full = client.info("memory")["used_memory"] - base
        client.flushall()

        _kill_mid_write(url, n)

        assert not keys_without_ttl(client)
        assert client.get(keys.metadata_key(PREFIX)) is None
        left = client.info("memory")["used_memory"] - base
        assert left > full // 10  # the dead run's staging is still there, with its TTL
        # room for one complete publish, not for it and the dead run's leftovers, which the rerun
        # frees first, as the forecast asset does for runs that have ended
        # (test_a_rerun_frees_staging_left_by_a_finished_run_but_not_a_live_ones)
        client.config_set("maxmemory", base + full + left // 2)
        for token in forecast_cache.staging_tokens(client, PREFIX, AS_OF):
            forecast_cache.delete_staging(client, PREFIX, AS_OF, token)

        forecast_cache.write_forecasts(client, PREFIX, AS_OF, payloads(n, "rerun"), 600, 600)

        assert len(forecast_cache.read_forecasts_for(client, PREFIX, AS_OF)) == n
        assert not staging_keys(client)
        assert not keys_without_ttl(client)
        client.close()


def test_redis_out_of_memory_mid_write_fails_loudly_and_cleans_up():
    n = 30_000
    with private_redis("--maxmemory-policy", "noeviction") as (url, _):
        client = redis.Redis.from_url(url, decode_responses=True)
        forecast_cache.write_forecasts(client, PREFIX, "2025-11-03", payloads(2000, "old"), 600, 600)
        forecast_cache.write_run_metadata(client, PREFIX, {"as_of_date": "2025-11-03"}, 600, 600)
        client.config_set("maxmemory", client.info("memory")["used_memory"] + 4_000_000)

        with pytest.raises(redis.exceptions.OutOfMemoryError):
            forecast_cache.write_forecasts(client, PREFIX, AS_OF, payloads(n, "new"), 600, 600)

        assert not staging_keys(client)
        assert not keys_without_ttl(client)
        assert not client.exists(keys.history_key(PREFIX, AS_OF))
        assert json.loads(client.get(keys.metadata_key(PREFIX)))["as_of_date"] == "2025-11-03"
        client.config_set("maxmemory", 0)
        forecast_cache.write_forecasts(client, PREFIX, AS_OF, payloads(n, "new"), 600, 600)
        assert len(forecast_cache.read_forecasts_for(client, PREFIX, AS_OF)) == n
        client.close()


def test_a_subset_write_never_leaves_a_key_without_ttl(redis_client):
    forecast_cache.write_forecasts(redis_client, PREFIX, AS_OF, payloads(3, "s"), 600, 600, replace_history=False)
    assert forecast_cache.read_forecasts_for(redis_client, PREFIX, AS_OF).keys() == {0, 1, 2}
    assert not keys_without_ttl(redis_client)


def test_a_subset_write_changes_the_dates_version_so_readers_notice(redis_client):
    """``write_forecasts(replace_history=False)`` (a run for some products) changes the date's hash in place:
    the version must change too, or a streaming reader returns a mix and cached figures go stale."""
    version = keys.version_key(PREFIX, AS_OF)
    forecast_cache.write_forecasts(redis_client, PREFIX, AS_OF, payloads(3, "full"), 600, 600)
    before = redis_client.get(version)
    forecast_cache.write_forecasts(redis_client, PREFIX, AS_OF, payloads(1, "some"), 600, 600, replace_history=False)
    merged = redis_client.get(version)
    assert merged is not None and merged != before
    assert 0 < redis_client.ttl(version) <= 600
    forecast_cache.write_forecasts(redis_client, PREFIX, AS_OF, [], 600, 600, False, drop_products=[2])
    assert redis_client.get(version) not in (before, merged)  # a drop changes the hash too
    assert forecast_cache.read_forecasts_for(redis_client, PREFIX, AS_OF).keys() == {0, 1}

    with pytest.raises(forecast_cache.ChangedWhileReading):
        for _ in forecast_cache.CachedForecasts(redis_client, PREFIX, AS_OF).items():
            forecast_cache.write_forecasts(
                redis_client, PREFIX, AS_OF, payloads(1, "raced"), 600, 600, replace_history=False
            )


def test_a_reader_raced_by_another_publish_reads_the_newest_one_or_fails(redis_client):
    """A run reading its date back while another run publishes it gets one publish, never a mix."""
    prefix, as_of = "forecast", "2026-11-16"
    redis_client.hset(keys.history_key(prefix, as_of), mapping={"1": json.dumps({"run": "a"})})
    redis_client.set(keys.version_key(prefix, as_of), "a")
    cached = forecast_cache.CachedForecasts(redis_client, prefix, as_of)
    publishes = iter(["b", "c", "d"])

    def read_while_another_run_publishes():
        seen = []
        for _, doc in cached.items():
            seen.append(doc["run"])
            run = next(publishes)
            redis_client.hset(keys.history_key(prefix, as_of), "1", json.dumps({"run": run}))
            redis_client.set(keys.version_key(prefix, as_of), run)
        return seen

    retries = []
    with pytest.raises(forecast_cache.ChangedWhileReading):  # it kept changing: three reads, then fail
        forecast_cache.read_consistently(read_while_another_run_publishes, retries.append)
    assert len(retries) == 2

    def read_quietly():
        return [doc["run"] for _, doc in cached.items()]

    retries.clear()
    changed_once = iter([True])

    def read_once_raced():
        seen = read_quietly()
        if next(changed_once, False):
            redis_client.set(keys.version_key(prefix, as_of), "e")
            redis_client.hset(keys.history_key(prefix, as_of), "1", json.dumps({"run": "e"}))
            raise forecast_cache.ChangedWhileReading("raced")
        return seen

    assert forecast_cache.read_consistently(read_once_raced, retries.append) == ["e"]
    assert len(retries) == 1
