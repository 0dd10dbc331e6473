"""forecast_pipeline: a Dagster code location that forecasts product demand into Redis.

``dagster ... -m forecast_pipeline`` finds the code location here as ``code_location`` (the name
``defs`` is the definitions folder, ``forecast_pipeline.defs``). It is loaded lazily, so the CLI
and the pure modules (models, settings) can be imported without building the code location.
"""

__all__ = ["code_location"]


def __getattr__(name: str):
    if name == "code_location":
        from forecast_pipeline.definitions import defs

        return defs
    raise AttributeError(f"module 'forecast_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), "code_location"]
