"""The code location: every area's definitions under ``forecast_pipeline/defs/``, loaded the way
``dg`` loads a project (``dg list defs``, ``dg check defs``, ``dg launch``)."""

import warnings
from pathlib import Path

import dagster as dg

# Beta parameters Dagster passes itself (binding a sensor to its job; `--assets '*'` under `dg
# launch`): nothing a user of this code location can act on, printed on every load otherwise.
for _message in ("Parameter `owners` of initializer `SensorDefinition.__init__`", "Parameter `include_sources`"):
    warnings.filterwarnings("ignore", message=_message, category=dg.BetaWarning)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
