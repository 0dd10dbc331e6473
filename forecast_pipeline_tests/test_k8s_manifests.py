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
    limits = VALUES["concurrency"]["runs"]["tagConcurrencyLimits"]  # the run queue: see deploy/helm/values.yaml
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


def _step_jobs(products: int, shard_size: int) -> dict[str, dict]:
    """The Kubernetes job k8s_job_executor builds for every step of one date's run, as its
    launch_step does: the step's own dagster-k8s/config tag (run-level tags are not applied to
    step pods), the step_worker component, a job name per run and step."""
    from dagster._core.execution.api import create_execution_plan
    from dagster._core.execution.plan.state import KnownExecutionState
    from dagster_k8s.job import get_k8s_job_name

    from forecast_pipeline.forecasting import shards as forecast_shards

    shards = forecast_shards.plan_shards("2026-11-16", range(products), shard_size)
    plan = create_execution_plan(
        defs.resolve_job_def("daily_forecast"),
        known_state=KnownExecutionState(
            dynamic_mappings={"product_forecasts.plan_forecast_shards": {"result": [s.mapping_key for s in shards]}}
        ),
        tags={"dagster/partition": "2026-11-16"},
    )
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
    jobs = {}
    for step in plan.get_all_steps_in_topo_order():
        if step.key.endswith("[?]"):  # the unresolved template of the mapped step
            continue
        name = f"dagster-step-{get_k8s_job_name('0123456789abcdef', step.key)}"
        jobs[step.key] = construct_dagster_k8s_job(
            job_config=job_config,
            args=["dagster", "api", "execute_step"],
            job_name=name,
            pod_name=name,
            component="step_worker",
            user_defined_k8s_config=get_user_defined_k8s_config(step.tags or {}),
            labels={"dagster/job": "daily_forecast", "dagster/op": step.key, "dagster/run-id": "0123456789abcdef"},
        ).to_dict()
    return jobs


def test_a_million_products_run_as_forty_shard_pods_sized_by_their_tags():
    jobs = _step_jobs(1_000_000, 25_000)
    shard_jobs = {k: j for k, j in jobs.items() if ".forecast_shard[" in k}
    assert len(shard_jobs) == 40
    assert len({j["metadata"]["name"] for j in jobs.values()}) == len(jobs)  # a pod per step
    for job in shard_jobs.values():
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"] == {"cpu": "1", "memory": "1536Mi"}
        assert container["resources"]["limits"] == {"memory": "2Gi"}
        assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "step_worker"
    publish = jobs["product_forecasts.publish_forecasts"]["spec"]["template"]["spec"]["containers"][0]
    assert publish["resources"]["limits"] == {"memory": "1Gi"}


def test_a_small_run_is_one_shard_pod():
    jobs = _step_jobs(9_850, 25_000)
    assert [k for k in jobs if ".forecast_shard[" in k] == ["product_forecasts.forecast_shard[d2026_11_16_s0]"]
