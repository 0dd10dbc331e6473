"""The deployment files read the way Dagster, the Helm chart and pip read them.

- each ``dagster.yaml`` under ``deploy/`` goes through Dagster's own instance-config validation
  (an unknown or misspelt key fails here, not silently in production);
- on Kubernetes the chart renders its own ``dagster.yaml`` from ``deploy/helm/values.yaml`` (the
  image's ``deploy/dagster.yaml`` is mounted over), so every production setting the README promises
  must also be in the values, in the chart's spelling;
- with ``includeConfigInLaunchedRuns`` the code location's container context (its env, secrets and
  *resources*) is merged over the run launcher's for every run and step pod (dagster-k8s
  ``K8sContainerContext.create_for_run``);
- the Dockerfile installs ``requirements.lock`` minus a filter with pip's resolver, so a kept
  package that requires a filtered one brings it back, unpinned.
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROD = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
VALUES = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
DEPLOYMENT = VALUES["dagster-user-deployments"]["deployments"][0]
LAUNCHER = VALUES["runLauncher"]["config"]["k8sRunLauncher"]


@pytest.mark.parametrize("path", ["dagster.yaml", "local/dagster.yaml"])
def test_each_instance_file_passes_dagsters_own_validation(path, tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((DEPLOY / path).read_text())
    config, _ = dagster_instance_config(str(tmp_path))  # raises DagsterInvalidConfigError on any bad key
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["max_runtime_seconds"] == 7200


def test_the_production_instance_sets_what_the_readme_promises(tmp_path, monkeypatch):
    """Built as Dagster builds it (storage classes aside: no database is opened)."""
    from dagster._core.instance.config import ConcurrencyConfig, dagster_instance_config
    from dagster._core.run_coordinator.queued_run_coordinator import RunQueueConfig

    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    # no run_coordinator: Dagster's default is the queued one, configured by `concurrency.runs`
    assert "run_coordinator" not in config
    concurrency = ConcurrencyConfig.from_concurrency_settings(
        config["concurrency"], RunQueueConfig(max_concurrent_runs=10, tag_concurrency_limits=[])
    )
    assert concurrency.run_queue_config.max_concurrent_runs == 4
    assert concurrency.pool_config.default_pool_limit == 10  # the forecast_shards pool (no other pool exists)
    assert config["run_retries"] == {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False}
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"


def test_the_helm_values_carry_the_production_instance_settings():
    """The chart (1.13.x) renders these values into the instance every pod mounts: what is only in
    deploy/dagster.yaml does not exist on Kubernetes."""
    # storage: the chart writes `scheme` only from postgresql.postgresqlScheme; without it
    # dagster-postgres builds postgresql://, which SQLAlchemy 2.1 maps to psycopg 3 (not installed)
    assert VALUES["postgresql"].get("postgresqlScheme") == PROD["storage"]["postgres"]["postgres_db"]["scheme"]
    # the forecast_shards pool: only the chart's top-level `concurrency` block (rendered only when
    # enabled) writes concurrency.pools; without it the pool has no limit at all
    concurrency = VALUES.get("concurrency", {})
    assert concurrency.get("enabled") is True
    assert concurrency["pools"]["defaultLimit"] == PROD["concurrency"]["pools"]["default_limit"]
    # JSON log lines inside runs (README: python_logs), telemetry off, tick retention
    python_logs = VALUES.get("pythonLogs", {})
    assert python_logs.get("managedPythonLoggers") == PROD["python_logs"]["managed_python_loggers"]
    assert python_logs.get("dagsterHandlerConfig") == PROD["python_logs"]["dagster_handler_config"]
    assert VALUES.get("telemetry") == {"enabled": False}
    assert VALUES.get("retention", {}).get("enabled") is True
    # the password comes from the secret created beforehand (values header), so the chart must not
    # generate one from postgresql.postgresqlPassword (chart default: true, password "test")
    assert VALUES.get("generatePostgresqlPasswordSecret") is False
    # run queue, monitoring and retries mirror deploy/dagster.yaml
    runs = concurrency["runs"]
    assert runs["maxConcurrentRuns"] == PROD["concurrency"]["runs"]["max_concurrent_runs"]
    assert runs["tagConcurrencyLimits"] == PROD["concurrency"]["runs"]["tag_concurrency_limits"]
    monitoring = VALUES["dagsterDaemon"]["runMonitoring"]
    assert monitoring["maxRuntimeSeconds"] == PROD["run_monitoring"]["max_runtime_seconds"]
    assert monitoring["startTimeoutSeconds"] == PROD["run_monitoring"]["start_timeout_seconds"]
    retries = VALUES["dagsterDaemon"]["runRetries"]
    assert retries["maxRetries"] == PROD["run_retries"]["max_retries"]
    assert retries["retryOnAssetOrOpFailure"] is PROD["run_retries"]["retry_on_asset_or_op_failure"]


def _chart_instance() -> dict:
    """The parts of the instance the chart (1.13.x templates configmap-instance.yaml and
    helpers/instance/_run-coordinator.tpl, _concurrency.tpl) renders from these values, in
    Dagster's spelling. Storage, launcher and scheduler are left out (they need a cluster)."""
    daemon = VALUES["dagsterDaemon"]
    queued = (daemon["runCoordinator"].get("config") or {}).get("queuedRunCoordinator") or {}
    run_coordinator_config = {}
    if queued.get("maxConcurrentRuns") is not None:
        run_coordinator_config["max_concurrent_runs"] = queued["maxConcurrentRuns"]
    if queued.get("tagConcurrencyLimits"):
        run_coordinator_config["tag_concurrency_limits"] = queued["tagConcurrencyLimits"]
    instance = {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": run_coordinator_config,
        },
        "telemetry": {"enabled": VALUES.get("telemetry", {"enabled": True})["enabled"]},
    }
    monitoring = daemon["runMonitoring"]
    instance["run_monitoring"] = {
        "enabled": monitoring["enabled"],
        "start_timeout_seconds": monitoring["startTimeoutSeconds"],
        "poll_interval_seconds": monitoring["pollIntervalSeconds"],
        "max_runtime_seconds": monitoring["maxRuntimeSeconds"],
    }
    retries = daemon["runRetries"]
    instance["run_retries"] = {
        "enabled": retries["enabled"],
        "max_retries": retries["maxRetries"],
        "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"],
    }
    concurrency = VALUES.get("concurrency", {})
    if concurrency.get("enabled"):
        rendered = {}
        pools, runs = concurrency.get("pools", {}), concurrency.get("runs", {})
        if "defaultLimit" in pools:
            rendered["pools"] = {"default_limit": pools["defaultLimit"]}
        if runs:
            rendered["runs"] = {"max_concurrent_runs": runs["maxConcurrentRuns"]}
            if runs.get("tagConcurrencyLimits"):
                rendered["runs"]["tag_concurrency_limits"] = runs["tagConcurrencyLimits"]
        instance["concurrency"] = rendered
    logs = VALUES.get("pythonLogs")
    if logs:
        instance["python_logs"] = {
            "managed_python_loggers": logs["managedPythonLoggers"],
            "dagster_handler_config": logs["dagsterHandlerConfig"],
        }
    return instance


def test_the_instance_the_chart_renders_passes_dagsters_validation_with_the_same_limits(tmp_path):
    """Dagster refuses an instance that has `concurrency` and run limits under run_coordinator;
    the queue sensor reads its capacity from what is rendered here."""
    from dagster._core.instance.config import ConcurrencyConfig, dagster_instance_config
    from dagster._core.run_coordinator.queued_run_coordinator import RunQueueConfig

    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(_chart_instance()))
    config, _ = dagster_instance_config(str(tmp_path))
    concurrency = ConcurrencyConfig.from_concurrency_settings(
        config["concurrency"], RunQueueConfig(max_concurrent_runs=10, tag_concurrency_limits=[])
    )
    assert concurrency.run_queue_config.max_concurrent_runs == PROD["concurrency"]["runs"]["max_concurrent_runs"]
    assert concurrency.run_queue_config.tag_concurrency_limits == PROD["concurrency"]["runs"]["tag_concurrency_limits"]
    assert concurrency.pool_config.default_pool_limit == PROD["concurrency"]["pools"]["default_limit"]
    assert config["run_monitoring"]["max_runtime_seconds"] == PROD["run_monitoring"]["max_runtime_seconds"]


def _effective_run_container_context():
    """What dagster-k8s builds for a run or step pod of this code location: the launcher's settings,
    then the container context the chart passes with includeConfigInLaunchedRuns (its helper
    dagsterUserDeployments.k8sContainerContext: env secrets, env list, resources, ...)."""
    from dagster_k8s.container_context import K8sContainerContext

    assert DEPLOYMENT["includeConfigInLaunchedRuns"]["enabled"] is True
    launcher = K8sContainerContext(
        env_secrets=[s["name"] for s in LAUNCHER["envSecrets"]],
        labels=LAUNCHER["labels"],
        resources=LAUNCHER["resources"],
    )
    code_location = {"env_secrets": [s["name"] for s in DEPLOYMENT["envSecrets"]], "env": DEPLOYMENT["env"]}
    if DEPLOYMENT.get("resources"):
        code_location["resources"] = DEPLOYMENT["resources"]
    return launcher.merge(K8sContainerContext.create_from_config({"k8s": code_location}))


def test_a_run_pod_without_a_resources_tag_gets_the_launchers_resources():
    """Jobs other than daily_forecast (alerts, reports) and untagged steps carry no
    dagster-k8s/config: their pods must get runLauncher.resources, not the gRPC server's."""
    container = _effective_run_container_context().run_k8s_config.container_config
    assert container["resources"] == LAUNCHER["resources"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FORECAST_EXECUTOR"] == "k8s"  # run and step pods build the k8s executor


def _image_filter() -> re.Pattern:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pattern = re.search(r'grep -viE "(\^\([^"]+\)==)"', dockerfile).group(1)
    return re.compile(pattern, re.IGNORECASE)


def test_the_image_keeps_no_package_that_pulls_a_filtered_one_back_unpinned():
    """pip resolves requirements: a kept package requiring a filtered one installs it anyway, at
    whatever version the index has (pytest-xdist -> pytest)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    image_filter = _image_filter()
    lines = [line.strip() for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line]
    filtered = {norm(line.split("==")[0]) for line in lines if image_filter.match(line)}
    kept = [line.split("==")[0] for line in lines if not image_filter.match(line)]
    assert "pytest" in filtered and "statsforecast" in filtered
    pulled_back = []
    for package in kept:
        for requirement in md.requires(package) or []:
            req = Requirement(requirement)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            if norm(req.name) in filtered:
                pulled_back.append(f"{package} -> {requirement}")
    assert pulled_back == []
