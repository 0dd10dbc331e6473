"""forecast_pipeline: a Dagster code location that forecasts product demand into Redis.

``dagster ... -m forecast_pipeline`` finds ``defs`` here. It is loaded lazily, so the CLI and the
pure modules (models, settings) can be imported without building the whole code location.
"""

__all__ = ["defs"]


def __getattr__(name: str):
    if name == "defs":
        from forecast_pipeline.definitions import defs

        return defs
    raise AttributeError(f"module 'forecast_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), "defs"]
