"""The Kubernetes jobs dagster-k8s builds from our Helm values and job tags, checked without a cluster.

The run launcher merges its config (from deploy/helm/values.yaml) with the `dagster-k8s/config`
tag of the job being launched, then calls dagster_k8s.job.construct_dagster_k8s_job: so do we.
"""

import re
from pathlib import Path

import yaml
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

from forecast_pipeline.definitions import defs as load_defs

ROOT = Path(__file__).parents[1]
defs = load_defs()
VALUES = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
CHART_DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome (not overridden)
LAUNCHER = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
DEPLOYMENT = VALUES["dagster-user-deployments"]["deployments"][0]


def _run_job(component: str = "run_worker"):
    image = f"{DEPLOYMENT['image']['repository']}:{DEPLOYMENT['image']['tag']}"
    job_config = DagsterK8sJobConfig(
        job_image=image,
        dagster_home=CHART_DAGSTER_HOME,
        image_pull_policy=DEPLOYMENT["image"]["pullPolicy"],
        instance_config_map="dagster-instance",
        env_secrets=[s["name"] for s in LAUNCHER["envSecrets"]],
        labels=LAUNCHER["labels"],
        resources=LAUNCHER["resources"],
    )
    tags = defs.resolve_job_def("daily_forecast").tags
    return construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0123456789abcdef",
        user_defined_k8s_config=get_user_defined_k8s_config(tags),
        component=component,
        labels={"dagster/job": "daily_forecast", "dagster/run-id": "0123456789abcdef"},
    ).to_dict()


def test_the_run_pod_uses_our_image_and_reads_config_from_the_secret():
    pod = _run_job()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/forecast-pipeline:0.1.0"
    assert container["image_pull_policy"] == "IfNotPresent"
    secrets = [source["secret_ref"]["name"] for source in container["env_from"] if source.get("secret_ref")]
    assert secrets == ["forecast-pipeline-env"]
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    assert pod["restart_policy"] == "Never"


def test_the_forecast_job_tag_sets_the_pod_resources_over_the_launcher_default():
    container = _run_job()["spec"]["template"]["spec"]["containers"][0]
    # daily_forecast asks for 2 CPUs and 2-4 GiB (schedules.K8S_RUN_CONFIG); the launcher default is smaller
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "2Gi"}
    assert container["resources"]["limits"] == {"memory": "4Gi"}


def test_labels_identify_the_run_and_the_project():
    job = _run_job()
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["app.kubernetes.io/part-of"] == "forecast-pipeline"
        assert labels["app.kubernetes.io/component"] == "run_worker"
        assert labels["dagster/job"] == "daily_forecast"


def test_values_turn_on_the_k8s_executor_and_the_daemon_safeguards():
    env = {e["name"]: e["value"] for e in DEPLOYMENT["env"]}
    assert env["FORECAST_EXECUTOR"] == "k8s"
    daemon = VALUES["dagsterDaemon"]
    assert daemon["runMonitoring"]["enabled"] and daemon["runRetries"]["retryOnAssetOrOpFailure"] is False
    limits = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert {"key": "forecast/concurrency_key", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits


def test_the_k8s_executor_is_selected_by_environment():
    from dagster_k8s import k8s_job_executor

    from forecast_pipeline.defs.resources import executor_for

    assert executor_for("k8s") is k8s_job_executor


def test_the_image_keeps_dagster_home_where_the_chart_mounts_the_instance():
    # The chart mounts dagster.yaml into DAGSTER_HOME as a file; the directory comes from the image,
    # owned by the runtime user, so run pods can write compute logs and local storage there.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "dagsterHome" not in str(VALUES.get("global", {}))
    assert re.search(r"DAGSTER_HOME=(\S+)", dockerfile).group(1) == CHART_DAGSTER_HOME
    assert 'chown dagster:dagster "$DAGSTER_HOME"' in dockerfile
