"""A date forecast in shards: each shard a step of its own, retried alone, published once by one
final step. On real Postgres and Redis; Dagster runs in process (a shard step per product group)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import redis
from dagster import (
    DagsterEventType,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    ReexecutionOptions,
    RetryPolicy,
    define_asset_job,
    execute_job,
    in_process_executor,
    reconstructable,
)

from forecast_pipeline.cache import forecast_cache, keys
from forecast_pipeline.defs.forecasts import assets
from forecast_pipeline.defs.forecasts.assets import eligible_products, forecast_predictions, product_forecasts
from forecast_pipeline.defs.forecasts.checks import cached_forecasts_well_formed
from forecast_pipeline.forecasting import batch
from forecast_pipeline.forecasting import shards as forecast_shards
from forecast_pipeline.source import kept_lines, order_history
from forecast_pipeline_tests.conftest import AS_OF, REDIS_URL, engine_url, forecast_resources, materialize_date

ASSETS = [eligible_products, product_forecasts, forecast_predictions, cached_forecasts_well_formed]
DATE = AS_OF.isoformat()
PREFIX = "forecast"
pytestmark = pytest.mark.integration


@pytest.fixture
def book(pg, pg_orders):
    """Twenty-two eligible products with a year of weekly orders."""
    for product in range(1, 23):
        pg_orders.weekly(product, customers=[product, product + 100], weeks=60, quantity=product)
    return pg


def run(database, instance, **kwargs):
    return materialize_date(ASSETS, database, instance, **kwargs)


def without_generated_at(doc: str) -> dict:
    parsed = json.loads(doc)
    parsed["model_metadata"].pop("generated_at")
    return parsed


def step_starts(instance, run_id: str) -> dict[str, int]:
    """How many times each step ran (its first start and each retry's restart)."""
    starts: dict[str, int] = {}
    kinds = {DagsterEventType.STEP_START, DagsterEventType.STEP_RESTARTED}
    for record in instance.get_records_for_run(run_id, of_type=kinds).records:
        key = record.event_log_entry.step_key
        starts[key] = starts.get(key, 0) + 1
    return starts


# --- planning ----------------------------------------------------------------------------------


def test_shards_hold_at_most_the_shard_size_and_every_product_once():
    ids = list(range(100, 1100))
    shards = forecast_shards.plan_shards(DATE, ids, 300)
    assert [s.count for s in shards] == [4] * 4 and max(len(s.product_ids) for s in shards) <= 300
    assert sorted(np.concatenate([s.product_ids for s in shards]).tolist()) == ids
    assert len({s.mapping_key for s in shards}) == 4
    # an empty date is still one (empty) shard, so it is published empty and says so
    [empty] = forecast_shards.plan_shards(DATE, [], 300)
    assert len(empty.product_ids) == 0 and empty.count == 1
    # ids stay exact over the signed 64-bit range
    assert forecast_shards.plan_shards(DATE, [2**63 - 1, 2**53 + 1], 1)[0].product_ids.tolist() == [2**63 - 1]


# --- through Dagster -----------------------------------------------------------------------------


def test_a_sharded_run_publishes_what_one_shard_publishes(book, redis_client, instance):
    one = run(book, instance)
    assert one.success
    single_latest = {p: without_generated_at(redis_client.get(f"forecast:{p}")) for p in range(1, 23)}
    single_meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    redis_client.flushdb()

    sharded = run(book, instance, FORECAST_SHARD_SIZE="5")
    assert sharded.success
    shard_steps = [k for k in step_starts(instance, sharded.run_id) if ".forecast_shard[" in k]
    assert len(shard_steps) == 5  # 22 products, at most 5 a shard
    assert {p: without_generated_at(redis_client.get(f"forecast:{p}")) for p in range(1, 23)} == single_latest
    cached = forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)
    assert sorted(cached) == list(range(1, 23))
    meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    for figure in ("total_products", "successful", "failed", "no_forecast", "mean_accuracy_estimate"):
        assert meta[figure] == single_meta[figure], figure
    materialization = sharded.asset_materializations_for_node("product_forecasts")[0]
    assert materialization.metadata["shards"].value == 5
    assert materialization.metadata["total_products"].value == 22
    assert "top_forecasts" in materialization.metadata and "forecast_chart_4" in materialization.metadata
    # the table's top product is the largest over all shards (product 22 sells the most)
    assert materialization.metadata["top_forecasts"].value.records[0].data["product_id"] == "22"
    checks = {e.check_name: e.passed for e in sharded.get_asset_check_evaluations()}
    assert checks == {"failure_rate_within_limit": True, "cached_forecasts_well_formed": True}
    # nothing of the run is left staged
    assert not forecast_cache.staging_tokens(redis_client, PREFIX, DATE)


def test_a_one_shard_date_forecasts_from_the_eligibility_read_with_the_same_results(
    book, redis_client, instance, monkeypatch
):
    """In process, a one-shard date's shard uses the lines eligible_products read instead of
    reading them again; the forecasts are those of a run that reads them again."""
    monkeypatch.setattr(order_history, "KEEP_LINES_LIMIT", 0)  # nothing kept: the shard reads
    again = run(book, instance)
    assert again.success
    read_again = {p: without_generated_at(redis_client.get(f"forecast:{p}")) for p in range(1, 23)}
    meta_again = json.loads(redis_client.get("forecast:metadata:last_run"))
    redis_client.flushdb()

    monkeypatch.undo()

    def no_second_read(*args, **kwargs):
        raise AssertionError("the shard read the history again")

    monkeypatch.setattr(order_history, "fetch_history", no_second_read)
    reused = run(book, instance)
    assert reused.success
    assert {p: without_generated_at(redis_client.get(f"forecast:{p}")) for p in range(1, 23)} == read_again
    meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    for figure in ("total_products", "successful", "no_forecast", "mean_accuracy_estimate"):
        assert meta[figure] == meta_again[figure], figure
    assert kept_lines.take(reused.run_id, DATE) is None  # taken by the shard, nothing left held


def _fail_products(monkeypatch, quantities: set[float]) -> None:
    real = batch.forecast_batch

    def forecaster(y, horizon):
        if any(float(row[-1]) in quantities for row in y):
            raise FloatingPointError("model blew up")
        return real(y, horizon)

    monkeypatch.setattr(batch, "_shard_task", lambda y, horizon: batch.forecast_isolated(y, horizon, forecaster))


def test_the_failure_rate_counts_products_over_all_shards(book, redis_client, instance, monkeypatch):
    # product 4 fails: 1 of its shard's 5 products (20%) but 1 of the date's 22 (4.5% <= 5%)
    _fail_products(monkeypatch, {4.0})
    result = run(book, instance, FORECAST_SHARD_SIZE="5")
    assert result.success
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "failure_rate_within_limit")
    assert evaluation.passed and evaluation.metadata["failure_rate"].value == round(1 / 22, 4)
    assert sorted(forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)) == sorted(set(range(1, 23)) - {4})

    # two failures in two different shards: 2 of 22 = 9% > 5%: nothing published, staging freed
    redis_client.flushdb()
    _fail_products(monkeypatch, {4.0, 9.0})
    failed = run(book, instance, FORECAST_SHARD_SIZE="5", raise_on_error=False)
    assert not failed.success
    evaluation = next(e for e in failed.get_asset_check_evaluations() if e.check_name == "failure_rate_within_limit")
    assert not evaluation.passed and evaluation.metadata["failed"].value == 2
    assert redis_client.exists(keys.history_key(PREFIX, DATE)) == 0
    assert redis_client.get("forecast:5") is None and redis_client.get("forecast:metadata:last_run") is None
    assert not forecast_cache.staging_tokens(redis_client, PREFIX, DATE)


def test_a_failing_shard_is_retried_alone_and_the_date_is_published_whole(book, redis_client, instance, monkeypatch):
    real = assets.run_forecasts
    attempts = {"failed": 0}

    def flaky(history, product_ids, *args, **kwargs):
        if 7 in product_ids and attempts["failed"] == 0:
            attempts["failed"] += 1
            raise ConnectionResetError("database connection lost mid-shard")
        return real(history, product_ids, *args, **kwargs)

    monkeypatch.setattr(assets, "run_forecasts", flaky)
    result = run(book, instance, FORECAST_SHARD_SIZE="5")
    assert result.success and attempts["failed"] == 1
    starts = step_starts(instance, result.run_id)
    shard_starts = {k: n for k, n in starts.items() if ".forecast_shard[" in k}
    assert len(shard_starts) == 5
    assert sorted(shard_starts.values()) == [1, 1, 1, 1, 2]  # only the failed shard ran twice
    assert starts["product_forecasts.plan_forecast_shards"] == 1
    assert starts["product_forecasts.publish_forecasts"] == 1
    assert sorted(forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)) == list(range(1, 23))
    assert json.loads(redis_client.get("forecast:metadata:last_run"))["total_products"] == 22


REEXECUTION_DATABASE = "FORECAST_TEST_REEXECUTION_DATABASE_URL"


def forecast_date_job():
    """The forecast assets as one job that Dagster can rebuild by name, as it does to re-execute a
    run (``reconstructable``); its database comes from the test's environment."""
    definitions = Definitions(
        assets=[eligible_products, product_forecasts, forecast_predictions],
        asset_checks=[cached_forecasts_well_formed],
        jobs=[define_asset_job("forecast_date")],
        resources=forecast_resources(os.environ[REEXECUTION_DATABASE], FORECAST_SHARD_SIZE="5"),
        executor=in_process_executor,
    )
    return definitions.resolve_job_def("forecast_date")


def test_a_run_whose_shard_kept_failing_is_reexecuted_from_failure_and_publishes_the_whole_date(
    book, redis_client, instance, monkeypatch
):
    # A shard that fails every attempt (or whose process or pod is killed: Dagster does not retry
    # a crash) fails the run before anything is published. "Re-execute from failure" in the UI
    # then runs that shard again and the publish, loading the other shards' results from the
    # failed run: the date is published whole and the shards that succeeded are not redone.
    monkeypatch.setenv(REEXECUTION_DATABASE, engine_url(book))
    monkeypatch.setattr(assets, "SHARD_RETRY", RetryPolicy(max_retries=2, delay=0))
    real = assets.run_forecasts
    broken = {"on": True}

    def failing(history, product_ids, *args, **kwargs):
        if broken["on"] and 7 in product_ids:
            raise ConnectionResetError("the shard's database connection keeps dropping")
        return real(history, product_ids, *args, **kwargs)

    monkeypatch.setattr(assets, "run_forecasts", failing)
    job = reconstructable(forecast_date_job)
    tags = {"dagster/partition": DATE}
    failed = execute_job(job, instance=instance, tags=tags)
    assert not failed.success
    assert redis_client.get("forecast:metadata:last_run") is None  # nothing published
    failed_steps = step_starts(instance, failed.run_id)
    assert sorted(n for k, n in failed_steps.items() if ".forecast_shard[" in k) == [1, 1, 1, 1, 3]

    broken["on"] = False
    options = ReexecutionOptions.from_failure(failed.run_id, instance)
    rerun = execute_job(job, instance=instance, tags=tags, reexecution_options=options)
    assert rerun.success
    rerun_steps = step_starts(instance, rerun.run_id)
    shard_steps = [k for k in rerun_steps if ".forecast_shard[" in k]
    assert len(shard_steps) == 1 and failed_steps[shard_steps[0]] == 3  # only the shard that failed
    assert "eligible_products" not in rerun_steps and "product_forecasts.plan_forecast_shards" not in rerun_steps
    assert rerun_steps["product_forecasts.publish_forecasts"] == 1
    assert sorted(forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)) == list(range(1, 23))
    meta = json.loads(redis_client.get("forecast:metadata:last_run"))
    assert meta["total_products"] == 22 and meta["successful"] == 22
    assert not forecast_cache.staging_tokens(redis_client, PREFIX, DATE)


# --- the staging protocol on real Redis ----------------------------------------------------------


def docs(ids, marker: str) -> list[dict]:
    return [{"product_id": int(i), "as_of_date": DATE, "marker": marker} for i in ids]


def stage_all(client, token: str, shards, marker: str, order) -> np.ndarray:
    staged = []
    for index in order:
        ids = shards[index].product_ids
        forecast_cache.stage_forecasts(client, PREFIX, DATE, token, docs(ids, marker), ids)
        staged.append(ids)
    return np.concatenate(staged)


def test_shards_staged_in_any_order_publish_exactly_the_date(redis_client):
    forecast_cache.write_forecasts(redis_client, PREFIX, DATE, docs(range(0, 40), "old"), 600, 600)
    shards = forecast_shards.plan_shards(DATE, range(10, 50), 7)  # 6 shards
    ids = stage_all(redis_client, "run-a", shards, "new", order=[5, 2, 0, 4, 1, 3])
    # before the publish the reader still sees the old date whole: hash and latest keys
    assert {json.loads(d)["marker"] for d in redis_client.hvals(keys.history_key(PREFIX, DATE))} == {"old"}
    assert json.loads(redis_client.get("forecast:12"))["marker"] == "old"

    result = forecast_cache.publish_staged(redis_client, PREFIX, DATE, "run-a", ids, 600, 600)

    cached = forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)
    assert sorted(cached) == list(range(10, 50)) and {d["marker"] for d in cached.values()} == {"new"}
    assert json.loads(redis_client.get("forecast:49"))["marker"] == "new"
    # products 0-9 are no longer forecast for the date: their latest keys of that date are gone
    assert result["latest_removed"] == 10 and redis_client.get("forecast:3") is None
    assert not forecast_cache.staging_tokens(redis_client, PREFIX, DATE)
    assert all(redis_client.ttl(k) > 0 for k in redis_client.scan_iter("forecast:*"))


def test_a_retried_shard_leaves_only_its_last_attempt(redis_client):
    shards = forecast_shards.plan_shards(DATE, range(20), 10)  # 2 shards
    stage_all(redis_client, "run-a", shards, "first", order=[0, 1])
    # shard 1 retried: this time two of its products fail, the others get new forecasts
    retry_ids = [p for p in shards[1].product_ids.tolist() if p not in (1, 3)]
    forecast_cache.stage_forecasts(redis_client, PREFIX, DATE, "run-a", docs(retry_ids, "retry"), shards[1].product_ids)
    staged = np.concatenate([shards[0].product_ids, np.asarray(retry_ids)])

    forecast_cache.publish_staged(redis_client, PREFIX, DATE, "run-a", staged, 600, 600)

    cached = forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)
    assert sorted(cached) == sorted(staged.tolist()) and 1 not in cached and 3 not in cached
    assert {p for p, d in cached.items() if d["marker"] == "retry"} == set(retry_ids)


def test_a_missing_shard_publishes_nothing(redis_client):
    forecast_cache.write_forecasts(redis_client, PREFIX, DATE, docs(range(5), "old"), 600, 600)
    shards = forecast_shards.plan_shards(DATE, range(30), 10)
    staged = stage_all(redis_client, "run-a", shards, "new", order=[0, 2])  # shard 1's staging lost
    expected = np.concatenate([s.product_ids for s in shards])
    with pytest.raises(redis.ResponseError, match="staging hash holds 20 of 30"):
        forecast_cache.publish_staged(redis_client, PREFIX, DATE, "run-a", expected, 600, 600)
    assert len(staged) == 20
    cached = forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)
    assert sorted(cached) == list(range(5)) and {d["marker"] for d in cached.values()} == {"old"}
    assert not forecast_cache.staging_tokens(redis_client, PREFIX, DATE)  # freed


# A run's publish step, killed (SIGKILL) right after the script that renames its staging hash
# over the date's: nothing after that line runs, as when a pod is evicted mid-publish.
PUBLISHER_KILLED_AFTER_RENAME = textwrap.dedent(
    """
    import sys, time, numpy as np, redis
    from forecast_pipeline.cache import forecast_cache
    url, date, token, ids = sys.argv[1], sys.argv[2], sys.argv[3], [int(i) for i in sys.argv[4].split(",")]
    def stop_here(client, *args, **kwargs):
        client.set("killpoint", "renamed", ex=60)
        time.sleep(600)
    forecast_cache._write_latest_from_hash = stop_here
    client = redis.Redis.from_url(url, decode_responses=True)
    docs = [{"product_id": i, "as_of_date": date, "marker": "killed"} for i in ids]
    forecast_cache.stage_forecasts(client, "forecast", date, token, docs, ids)
    forecast_cache.publish_staged(client, "forecast", date, token, np.asarray(ids), 600, 600, lock_seconds=2)
    """
)


def publish(client, token: str, ids, marker: str, **kwargs) -> dict:
    """Stage ``ids`` in one shard and publish them as the date (a whole run, at cache level)."""
    ids = list(ids)
    forecast_cache.stage_forecasts(client, PREFIX, DATE, token, docs(ids, marker), ids)
    return forecast_cache.publish_staged(
        client, PREFIX, DATE, token, np.asarray(ids, dtype=np.int64), 600, 600, **kwargs
    )


def publish_killed_after_rename(client, token: str, ids) -> None:
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER_KILLED_AFTER_RENAME, REDIS_URL, DATE, token, ",".join(map(str, ids))],
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 60
        while client.get("killpoint") != "renamed":
            assert publisher.poll() is None and time.monotonic() < deadline, "the publisher never reached the kill"
            time.sleep(0.01)
    finally:
        publisher.send_signal(signal.SIGKILL)
        publisher.wait()
    client.delete("killpoint")


def test_a_rerun_after_a_publish_killed_after_its_rename_removes_the_dropped_products_latest_keys(redis_client):
    # run A published products 0-9 for the date; then products 8 and 9 stop being eligible
    publish(redis_client, "run-a", range(10), "a")
    assert json.loads(redis_client.get("forecast:9"))["marker"] == "a"
    # run B (products 0-7) is killed after its publish script renamed its staging over the date
    publish_killed_after_rename(redis_client, "run-b", range(8))
    assert sorted(forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)) == list(range(8))

    # the rerun (run C) forecasts products 0-7 again and publishes the date whole
    publish(redis_client, "run-c", range(8), "c")

    cached = forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)
    assert sorted(cached) == list(range(8)) and {d["marker"] for d in cached.values()} == {"c"}
    assert json.loads(redis_client.get("forecast:7"))["marker"] == "c"
    # products 8 and 9 are not forecast for the date any more: no forecast:{id} may still serve
    # run A's forecast of it as the newest one
    assert redis_client.get("forecast:8") is None and redis_client.get("forecast:9") is None


def test_a_failed_publish_between_a_killed_one_and_the_rerun_keeps_what_is_left_to_remove(redis_client):
    """A failed publish (here a shard's staging lost) replaced the record of what the killed one had
    dropped with its own, so the rerun left product 9's forecast of the date readable (found by a
    hunting helper)."""
    publish(redis_client, "run-a", range(10), "a")
    publish_killed_after_rename(redis_client, "run-b", range(9))  # drops 9, killed before removing it
    # run C forecasts product 9 again, but a shard's staging is lost: its publish fails
    forecast_cache.stage_forecasts(redis_client, PREFIX, DATE, "run-c", docs(range(7), "c"), list(range(7)))
    with pytest.raises(redis.ResponseError, match="staging hash holds 7 of 10"):
        forecast_cache.publish_staged(redis_client, PREFIX, DATE, "run-c", np.arange(10), 600, 600)
    publish(redis_client, "run-d", range(9), "d")
    assert redis_client.get("forecast:9") is None
    assert json.loads(redis_client.get("forecast:8"))["marker"] == "d"


def test_a_rerun_of_a_date_whose_hash_expired_removes_the_dropped_products_latest_keys(redis_client):
    """The date's hash, the list a rerun removes from, can expire before the forecasts it lists
    (the Helm values keep it 3 days, forecast:{id} 7): the rerun found nothing to remove and left
    product 9's forecast of the date readable beside a last_run without it (found by a hunting helper)."""
    publish(redis_client, "run-a", range(10), "a")
    redis_client.delete(keys.history_key(PREFIX, DATE))  # expired
    publish(redis_client, "run-b", range(9), "b")
    assert redis_client.get("forecast:9") is None
    assert sorted(forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)) == list(range(9))


def test_a_run_for_some_products_drops_a_product_in_the_same_script_that_changes_the_version(redis_client, monkeypatch):
    """The drop was a separate HDEL after the version changed: a reader that read the version in
    between kept the dropped product and never noticed (found by a hunting helper)."""
    publish(redis_client, "run-a", range(5), "a")

    forecast_cache.stage_forecasts(redis_client, PREFIX, DATE, "run-b", docs([1], "b"), [1])
    hdel = redis.Redis.hdel

    def hdel_outside_the_script(self, name, *fields):
        assert name != keys.history_key(PREFIX, DATE), f"HDEL {name} {fields} outside the publish script"
        return hdel(self, name, *fields)

    monkeypatch.setattr(redis.Redis, "hdel", hdel_outside_the_script)
    version = redis_client.get(keys.version_key(PREFIX, DATE))
    forecast_cache.publish_staged(
        redis_client, PREFIX, DATE, "run-b", np.asarray([1]), 600, 600, replace_history=False, drop_products=[1, 3]
    )
    assert sorted(forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)) == [0, 1, 2, 4]
    assert redis_client.get(keys.version_key(PREFIX, DATE)) != version
    assert redis_client.get("forecast:3") is None


def test_a_publisher_that_stalls_past_its_lease_writes_nothing_after_the_run_that_took_over(redis_client):
    """Only the publish script checked the lease: a publisher stalled past it (a paused VM, a
    starved pod) while another run published the date then wrote its own figures over that run's,
    and both succeeded (found by a hunting helper). Now every write after the rename checks it."""
    publish(redis_client, "run-a", range(6), "a")
    took_over = {}

    def stalled_figures() -> dict:
        time.sleep(1.5)  # the lease (1 s) expires; run C publishes the date meanwhile
        took_over.update(
            publish(
                redis.Redis.from_url(REDIS_URL, decode_responses=True),
                "run-c",
                range(4),
                "c",
                run_metadata=lambda: {"as_of_date": DATE, "run": "c"},
            )
        )
        return {"as_of_date": DATE, "run": "b"}

    with pytest.raises((forecast_cache.PublishError, redis.ResponseError, redis.exceptions.LockError)):
        publish(redis_client, "run-b", range(5), "b", lock_seconds=1, run_metadata=stalled_figures)
    assert took_over["last_run_updated"] == 1
    for key in (keys.metadata_key(PREFIX), keys.metadata_key(PREFIX, DATE)):
        assert json.loads(redis_client.get(key))["run"] == "c", key
    cached = forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)
    assert sorted(cached) == list(range(4)) and {d["marker"] for d in cached.values()} == {"c"}
    assert redis_client.get("forecast:4") is None and redis_client.get("forecast:5") is None


def test_two_runs_of_one_date_interleaving_shards_never_mix(redis_client):
    shards_a = forecast_shards.plan_shards(DATE, range(0, 300), 50)
    shards_b = forecast_shards.plan_shards(DATE, range(100, 400), 50)
    # both runs' shards write at the same time; then both publish at once
    barrier = threading.Barrier(2)
    staged: dict[str, np.ndarray] = {}
    outcomes: dict[str, str] = {}

    def one_run(token: str, shards) -> None:
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            barrier.wait()
            staged[token] = stage_all(client, token, shards, token, order=range(len(shards)))
            barrier.wait()
            forecast_cache.publish_staged(client, PREFIX, DATE, token, staged[token], 600, 600)
            outcomes[token] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported below
            outcomes[token] = repr(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=one_run, args=a) for a in (("run-a", shards_a), ("run-b", shards_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes == {"run-a": "ok", "run-b": "ok"}
    cached = forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)
    [winner] = {d["marker"] for d in cached.values()}  # one run's forecasts, whole
    assert sorted(cached) == sorted(staged[winner].tolist())
    # the latest keys agree with the hash: the loser's products outside it were removed
    for product in range(0, 400):
        doc = redis_client.get(f"forecast:{product}")
        assert (doc is not None) == (product in cached), product
        assert doc is None or json.loads(doc)["marker"] == winner
    assert not forecast_cache.staging_tokens(redis_client, PREFIX, DATE)


def test_a_rerun_frees_staging_left_by_a_finished_run_but_not_a_live_ones(book, redis_client, instance):
    live = instance.add_run(
        DagsterRun(job_name="daily_forecast", run_id="a1b2c3d4-live", status=DagsterRunStatus.STARTED)
    )
    for token in ("dead-run", live.run_id):  # a run that died after staging (unknown to the instance)
        forecast_cache.stage_forecasts(redis_client, PREFIX, DATE, token, docs(range(5), token), range(5))
    result = run(book, instance, FORECAST_SHARD_SIZE="5")
    assert result.success
    assert forecast_cache.staging_tokens(redis_client, PREFIX, DATE) == [live.run_id]
    cached = forecast_cache.read_forecasts_for(redis_client, PREFIX, DATE)
    assert sorted(cached) == list(range(1, 23)) and {d.get("marker") for d in cached.values()} == {None}
