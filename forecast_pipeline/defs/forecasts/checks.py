"""Asset checks that read back what the forecast API will serve."""

import warnings

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckSeverity,
    MetadataValue,
    PreviewWarning,
    asset_check,
)

from forecast_pipeline.cache.forecast_cache import CachedForecasts, read_consistently
from forecast_pipeline.defs.forecasts.assets import partition_check_results, product_forecasts
from forecast_pipeline.defs.forecasts.partitions import as_of_partitions
from forecast_pipeline.resources import RedisStore, redis_failures

WELL_FORMED_CHECK = AssetCheckKey(product_forecasts.key, "cached_forecasts_well_formed")
NOTHING_CACHED = (
    "No cached forecasts for {as_of}: nothing was checked. {key} is not in Redis: expired after "
    "FORECAST_HISTORY_TTL, deleted (Redis flushed or evicting), or the date was never materialized. "
    "Materialize product_forecasts for {as_of} to cache and check it."
)


def _cached_forecasts_well_formed(
    context: AssetCheckExecutionContext, product_forecasts: dict[str, CachedForecasts], redis_store: RedisStore
):
    """12 weeks each, quantities >= 0, lower <= predicted <= upper, the right as-of date.

    A date with no cached forecast has had nothing checked, so it does not pass (run alone on a
    date whose keys expired, it would otherwise vouch for forecasts the API cannot serve): a
    warning, since FORECAST_HISTORY_TTL expiring old dates is by design. It passes only when the
    date's run figures say the run published none."""
    results, notes = {}, {}
    for as_of, docs in product_forecasts.items():

        def find_problems(docs=docs, as_of=as_of) -> dict[str, str]:
            found = {}
            for product_id, doc in docs.items():
                issue = forecast_problem(doc, as_of)
                if issue:
                    found[str(product_id)] = issue
            return found

        # another run of the date may publish while this one reads it back: then check the newest
        with redis_failures(redis_store.url, f"reading the forecasts of {as_of} back"):
            problems = read_consistently(find_problems, context.log.info)
            metadata = {"cached_forecasts": len(docs), "malformed": len(problems)}
            published = docs.published()
        if problems:
            metadata["examples"] = MetadataValue.json(dict(list(problems.items())[:10]))
        results[as_of] = (not problems, metadata)
        if not metadata["cached_forecasts"] and published:  # nothing to check, rightly
            notes[as_of] = (AssetCheckSeverity.ERROR, f"The run of {as_of} published no forecast: nothing to check.")
        elif not metadata["cached_forecasts"]:  # nothing checked: not a pass
            results[as_of] = (False, metadata)
            notes[as_of] = (AssetCheckSeverity.WARN, NOTHING_CACHED.format(as_of=as_of, key=docs.key))
    yield from partition_check_results(context.op_execution_context.assets_def, WELL_FORMED_CHECK, results, notes=notes)


with warnings.catch_warnings():  # partitioned checks are "preview": nothing a user can act on
    warnings.simplefilter("ignore", PreviewWarning)
    cached_forecasts_well_formed = asset_check(
        asset=product_forecasts,
        name="cached_forecasts_well_formed",
        description="Every cached forecast of the as-of date is well formed.",
        partitions_def=as_of_partitions,  # each result shows its as-of date
    )(_cached_forecasts_well_formed)


def forecast_problem(doc: dict, as_of: str | None) -> str | None:
    """What is wrong with one cached forecast document, or None."""
    if as_of is not None and doc.get("as_of_date") != as_of:
        return f"as_of_date {doc.get('as_of_date')} != {as_of}"
    predictions = doc.get("predictions") or []
    if len(predictions) != doc.get("forecast_weeks"):
        return f"{len(predictions)} predictions for forecast_weeks={doc.get('forecast_weeks')}"
    for week in predictions:
        low, point, high = week["confidence_lower"], week["predicted_quantity"], week["confidence_upper"]
        if not 0 <= low <= point <= high:
            return f"week {week['week_start']}: not 0 <= {low} <= {point} <= {high}"
    return None
