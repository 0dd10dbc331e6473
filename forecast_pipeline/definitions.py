"""The code location: every area's definitions under ``forecast_pipeline/defs/``, loaded as ``dg``
loads the project (``dg list defs``, ``dg check defs``, ``dg launch``; ``[tool.dg]`` in pyproject.toml)."""

import os
import threading
import warnings
from pathlib import Path

import dagster as dg

import forecast_pipeline.defs
from forecast_pipeline.json_logging import log_json_lines

# Beta parameters Dagster passes itself (binding a sensor to its job; `--assets '*'` under `dg
# launch`): nothing a user of this code location can act on, printed on every load otherwise.
for _message in ("Parameter `owners` of initializer `SensorDefinition.__init__`", "Parameter `include_sources`"):
    warnings.filterwarnings("ignore", message=_message, category=dg.BetaWarning)


# the library's log records (the request queue's transitions, in the sensors) as JSON lines; in a run,
# dagster.yaml's python_logs formats them instead
log_json_lines()


PROJECT_ROOT = Path(__file__).parent.parent


_built: dict[tuple, dg.Definitions] = {}  # one entry: the environment it was built for
_building = threading.Lock()


@dg.definitions
def defs() -> dg.Definitions:
    """The code location, built once per environment.

    Dagster calls this several times in one process for one materialization (the CLI, the job,
    each step's reconstruction); building imports and validates every area each time (figures in
    benchmarks/RESULTS.md). Resources and the executor are built from environment variables, so a changed
    environment builds anew.
    """
    key = tuple(sorted(os.environ.items()))
    with _building:
        if key not in _built:
            _built.clear()
            _built[key] = _build()
        return _built[key]


def _build() -> dg.Definitions:
    if (PROJECT_ROOT / "pyproject.toml").exists():  # a checkout, or the image's /opt/dagster/app
        return dg.load_from_defs_folder(path_within_project=PROJECT_ROOT)
    # installed without its project file: the same folder, found by module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return dg.load_defs(defs_root=forecast_pipeline.defs)
