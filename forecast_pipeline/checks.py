"""Asset checks that read back what the forecast API will serve."""

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from forecast_pipeline.assets import product_forecasts


@asset_check(asset=product_forecasts, description="Every cached forecast of the as-of date is well formed.")
def cached_forecasts_well_formed(product_forecasts: dict[str, dict[int, dict]]) -> AssetCheckResult:
    """12 weeks each, quantities >= 0, lower <= predicted <= upper, the right as-of date."""
    problems: dict[str, str] = {}
    for as_of, docs in product_forecasts.items():
        for product_id, doc in docs.items():
            issue = forecast_problem(doc, as_of)
            if issue:
                problems[f"{as_of}/{product_id}"] = issue
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "cached_forecasts": sum(len(docs) for docs in product_forecasts.values()),
            "malformed": len(problems),
            "examples": MetadataValue.json(dict(list(problems.items())[:10])),
        },
    )


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
