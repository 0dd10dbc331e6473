"""The code location as Dagster and ``dg`` load it: what it contains, pinned.

Adding or removing a definition is a deliberate change: update the lists here with it.
"""

from pathlib import Path

import pytest
from dagster import Definitions

from forecast_pipeline.definitions import defs as load_defs
from forecast_pipeline_tests.conftest import BIN, command

ASSETS = {"eligible_products", "product_forecasts", "forecast_predictions"}
ASSET_CHECKS = {
    ("product_forecasts", "cached_forecasts_well_formed"),
    ("product_forecasts", "failure_rate_within_limit"),
}
JOBS = {"daily_forecast", "generate_report"}
SCHEDULES = {"daily_forecast_schedule"}
SENSORS = {
    # forecast queue
    "forecast_request_queue",
    "forecast_request_succeeded",
    "forecast_request_failed",
    "forecast_request_cancelled",
    "forecast_request_recovery",
    # reports
    "report_schedule_tick",
    "report_run_failed",
    "report_run_cancelled",
    # alerts
    "alert_evaluation_sensor",
    "alert_notification_sensor",
    "alert_retention_sensor",
    "pipeline_health_sensor",
}
RESOURCES = {
    "app_db",
    "run_heartbeat",
    "source_db",
    "redis_store",
    "forecast_params",
    "forecast_io_manager",
    "table_io_manager",
    "forecast_step_io_manager",
    "forecast_shard_io_manager",
}


@pytest.fixture(scope="module")
def defs() -> Definitions:
    loaded = load_defs()
    Definitions.validate_loadable(loaded)
    return loaded


def test_the_code_location_holds_exactly_these_definitions(defs):
    repo = defs.get_repository_def()
    assert {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()} == ASSETS
    checks = {(key.asset_key.to_user_string(), key.name) for key in repo.asset_graph.asset_check_keys}
    assert checks == ASSET_CHECKS
    assert {job.name for job in repo.get_all_jobs() if not job.name.startswith("__")} == JOBS
    assert {schedule.name for schedule in repo.schedule_defs} == SCHEDULES
    assert {sensor.name for sensor in repo.sensor_defs} == SENSORS
    assert set(defs.resources) == RESOURCES


AREAS = {
    "forecasts": {"eligible_products", "product_forecasts", "forecast_predictions", "daily_forecast"}
    | {"daily_forecast_schedule", "cached_forecasts_well_formed"},
    "forecast_queue": {name for name in SENSORS if name.startswith("forecast_request_")},
    "reports": {"generate_report", "report_schedule_tick", "report_run_failed", "report_run_cancelled"},
    "alerts": {name for name in SENSORS if "alert" in name or name == "pipeline_health_sensor"},
}


def test_every_area_is_its_own_defs_folder():
    """Each definition is declared in the folder of its area (``forecast_pipeline/defs/<area>/``)."""
    import ast
    import importlib
    import pkgutil
    from pathlib import Path

    from dagster import AssetChecksDefinition, AssetsDefinition, JobDefinition, ScheduleDefinition, SensorDefinition
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

    kinds = (AssetsDefinition, JobDefinition, UnresolvedAssetJobDefinition, ScheduleDefinition, SensorDefinition)
    for area, expected in AREAS.items():
        package = importlib.import_module(f"forecast_pipeline.defs.{area}")
        declared = set()
        for module_info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{module_info.name}")
            tree = ast.parse(Path(module.__file__).read_text())
            # top-level statements, and those inside a top-level ``with`` (warnings filters)
            top = [n for node in tree.body for n in (node.body if isinstance(node, ast.With) else [node])]
            bound = {node.name for node in top if isinstance(node, ast.FunctionDef)}
            bound |= {t.id for node in top if isinstance(node, ast.Assign) for t in node.targets if hasattr(t, "id")}
            for value in (vars(module)[name] for name in bound):
                if isinstance(value, AssetChecksDefinition):
                    declared |= {key.name for key in value.check_keys}
                elif isinstance(value, kinds):
                    declared.add(value.key.to_user_string() if isinstance(value, AssetsDefinition) else value.name)
        assert declared == expected, area


def test_dagster_machinery_is_declared_where_the_readme_says(defs):
    from dagster import AssetKey

    from forecast_pipeline.defs.forecasts.assets import FORECAST_FRESHNESS, SHARD_POOL, SHARD_RETRY

    repo = defs.get_repository_def()
    assert repo.asset_graph.get(AssetKey("product_forecasts")).freshness_policy == FORECAST_FRESHNESS
    shard = repo.get_job("daily_forecast").graph.node_named("product_forecasts").definition.node_named("forecast_shard")
    assert shard.definition.pool == SHARD_POOL
    # retried from inside the op (RetryRequested with SHARD_RETRY's delays), never by a retry_policy:
    # Dagster would apply that to the interrupt of a terminated run too
    assert shard.retry_policy is None and shard.definition.retry_policy is None
    assert SHARD_RETRY.max_retries == 2


def test_every_resource_a_definition_needs_is_provided(defs):
    repo = defs.get_repository_def()
    needed = set()
    for job in repo.get_all_jobs():
        needed |= set(job.required_resource_keys)
    for sensor in repo.sensor_defs:
        needed |= set(sensor.required_resource_keys)
    assert needed <= RESOURCES | {"io_manager"}, needed - RESOURCES  # io_manager: Dagster's default


def test_library_code_never_imports_the_definitions():
    """Data flows one way: the definitions use the library, never the reverse."""
    import ast
    from pathlib import Path

    package = Path(__file__).parents[1] / "forecast_pipeline"
    DEFINITION_MODULES = ("forecast_pipeline.defs", "forecast_pipeline.definitions")
    offenders = []
    for path in package.rglob("*.py"):
        relative = path.relative_to(package).as_posix()
        # forkserver_preload.py is the definitions' side too: the executor's forkserver imports it
        if relative.startswith("defs/") or relative in ("definitions.py", "__init__.py", "forkserver_preload.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if any(n.startswith(DEFINITION_MODULES) for n in names):
                offenders.append(relative)
    assert offenders == []


@pytest.mark.integration
def test_dg_check_defs_passes(tmp_path):
    checked = command([str(BIN / "dg"), "check", "defs"], tmp_path)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr


def _sensor_name_limits(node) -> list:
    """Every run-queue limit keyed by ``dagster/sensor_name`` in a loaded YAML document."""
    if isinstance(node, dict):
        found = [node["value"]] if node.get("key") == "dagster/sensor_name" else []
        return found + [v for child in node.values() for v in _sensor_name_limits(child)]
    if isinstance(node, list):
        return [v for child in node for v in _sensor_name_limits(child)]
    return []


def test_the_deployed_run_queue_limits_name_the_queue_sensor():
    """The queue reads its run limit from the limit on its sensor's name: a limit still keyed by a
    former name (forecast_job_queue) would silently stop applying."""
    import yaml

    from forecast_pipeline.defs.forecast_queue.sensors import QUEUE_SENSOR

    root = Path(__file__).resolve().parents[1] / "deploy"
    for path in (root / "dagster.yaml", root / "helm" / "values.yaml"):
        assert _sensor_name_limits(yaml.safe_load(path.read_text())) == [QUEUE_SENSOR], path
    assert QUEUE_SENSOR == "forecast_request_queue"


def test_the_code_location_is_built_once_per_environment(monkeypatch):
    """Dagster loads the code location several times per run: the same environment gives the same
    object (built once); a changed variable builds it anew, with that variable's value."""
    first = load_defs()
    assert load_defs() is first
    assert first.executor.name != "multiprocess"
    monkeypatch.setenv("FORECAST_EXECUTOR", "multiprocess")
    changed = load_defs()
    assert changed is not first
    assert changed.executor.name == "multiprocess"
    assert load_defs() is changed


def test_the_forkserver_preload_builds_the_code_location():
    """FORECAST_EXECUTOR=multiprocess forks each step from a forkserver that imported
    forkserver_preload (``MULTIPROCESS_EXECUTOR``): importing it must leave the code location built,
    so a forked step process finds it in the cache instead of importing and validating every area
    again (the end-to-end effect, CPU per run, is measured in benchmarks/RESULTS.md)."""
    import importlib
    import sys

    import forecast_pipeline.definitions as definitions
    from forecast_pipeline.defs.resources import MULTIPROCESS_EXECUTOR, executor_for

    assert executor_for("multiprocess") is MULTIPROCESS_EXECUTOR
    assert MULTIPROCESS_EXECUTOR.name == "multiprocess"
    definitions._built.clear()
    sys.modules.pop("forecast_pipeline.forkserver_preload", None)
    importlib.import_module("forecast_pipeline.forkserver_preload")
    assert len(definitions._built) == 1
    assert definitions.defs() is next(iter(definitions._built.values()))
