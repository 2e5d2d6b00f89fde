"""The deployment files agree with the code: what the dashboard and the alert rules query
exists on /metrics, the compose file's settings are settings the app reads, and the
commands the image and compose run exist. (Docker itself cannot run on these machines.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml

from app.cli import build_parser
from app.config import Settings
from tests.service.support import finished, greet, post_workflow, start_run, unique

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bflowcore_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def queried_metrics() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "flowcore.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    names = set()
    for expr in exprs:
        for name in METRIC.findall(expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            names.add(name)
    return names


async def test_every_metric_the_dashboard_and_rules_query_exists(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("greet")
    await post_workflow(client, greet(workflow_id))
    run = await start_run(client, workflow_id, {"name": "Ada"})
    await finished(client, run["run_id"])
    exposition = (await client.get("/metrics")).text
    declared = set(re.findall(r"^# TYPE (flowcore_[a-z_]+) ", exposition, re.MULTILINE))
    declared |= {name.removesuffix("_total") for name in declared}
    wanted = queried_metrics()
    assert len(wanted) >= 12
    missing = {name for name in wanted if name not in declared and f"{name}_total" not in declared}
    assert not missing, f"queried but not exported: {sorted(missing)}"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_settings_are_settings_the_app_reads() -> None:
    fields = set(Settings.model_fields)
    services = compose()["services"]
    flowcore = {name: s for name, s in services.items() if s.get("image") == "flowcore:local"}
    assert {"migrate", "flowcore-1", "flowcore-2"} <= set(flowcore)
    for name, service in flowcore.items():
        for key in service["environment"]:
            assert key.startswith("FLOWCORE_"), (name, key)
            assert key.removeprefix("FLOWCORE_").lower() in fields, (name, key)
    for name in ("flowcore-1", "flowcore-2"):
        env = flowcore[name]["environment"]
        container_ports = {p.split(":")[1] for p in flowcore[name]["ports"]}
        assert container_ports == {env["FLOWCORE_PORT"]}
        assert env["FLOWCORE_REPLICA_ID"] == name
    assert {"postgres", "redis", "prometheus", "grafana"} <= set(services)


def test_the_commands_the_image_and_compose_run_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    found = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert found is not None
    cmd = json.loads(found.group(1))
    commands = [cmd] + [
        s["command"]
        for s in compose()["services"].values()
        if s.get("image") == "flowcore:local" and "command" in s
    ]
    parser = build_parser()
    for command in commands:
        assert command[0] == "flowcore", command
        parser.parse_args(command[1:])  # exits (SystemExit) on an unknown command or flag
    assert "USER flowcore" in dockerfile
    assert "HEALTHCHECK" in dockerfile
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'flowcore = "app.cli:main"' in pyproject


def test_prometheus_scrapes_the_compose_replicas() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    services = compose()["services"]
    for target in targets:
        host, port = target.split(":")
        assert host in services, target
        # the metrics listener: the API's own /metrics needs a key
        assert services[host]["environment"]["FLOWCORE_METRICS_PORT"] == port


def test_the_kubernetes_manifests_agree_with_the_app() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "flowcore.yaml").read_text()))
    by_kind = {doc["kind"]: doc for doc in docs}
    assert {"ConfigMap", "Job", "Deployment", "Service", "PodDisruptionBudget"} <= set(by_kind)
    fields = set(Settings.model_fields)
    for key in by_kind["ConfigMap"]["data"]:
        assert key.removeprefix("FLOWCORE_").lower() in fields, key
    parser = build_parser()
    pods = [by_kind["Job"]["spec"]["template"], by_kind["Deployment"]["spec"]["template"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            parser.parse_args(container["command"][1:])
            for env in container.get("env", []):
                assert env["name"].removeprefix("FLOWCORE_").lower() in fields, env["name"]
    server = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["resources"]["requests"]
    assert by_kind["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1
