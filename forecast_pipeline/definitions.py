"""The code location: every area's definitions under ``forecast_pipeline/defs/``, loaded as ``dg``
loads the project (``dg list defs``, ``dg check defs``, ``dg launch``; ``[tool.dg]`` in pyproject.toml)."""

import warnings

import dagster as dg

import forecast_pipeline.defs

# Beta parameters Dagster passes itself (binding a sensor to its job; `--assets '*'` under `dg
# launch`): nothing a user of this code location can act on, printed on every load otherwise.
for _message in ("Parameter `owners` of initializer `SensorDefinition.__init__`", "Parameter `include_sources`"):
    warnings.filterwarnings("ignore", message=_message, category=dg.BetaWarning)


@dg.definitions
def defs() -> dg.Definitions:
    # by module, not by path: an installed package (the Docker image) has no pyproject.toml above it
    return dg.load_defs(defs_root=forecast_pipeline.defs)
