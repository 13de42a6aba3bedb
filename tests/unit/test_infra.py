"""The monitoring files in infra/ stay true to the code: every metric the Grafana dashboard queries is one tickflow
exports, the scrape config reads /metrics, and the compose file mounts files that exist."""

from __future__ import annotations

import json
import re

import yaml

from tests.paths import REPO_ROOT

INFRA = REPO_ROOT / "infra"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _exported() -> set[str]:
    """Every metric name the code defines (module-level metrics and the roles' scrape-time samples)."""
    names: set[str] = set()
    for folder in ("services", "projections"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            names.update(re.findall(r'"(tickflow_[a-z0-9_]+)"', path.read_text()))
    return names


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "tickflow.json").read_text())
    exported = _exported()
    queried = {
        _base(name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"tickflow_[a-z0-9_]+", target["expr"])
    }
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"queried but never exported: {sorted(queried - exported)}"
    assert len(dashboard["panels"]) >= 12 and dashboard["uid"] == "tickflow"


def test_the_scrape_config_and_the_compose_file_fit_together() -> None:
    prometheus = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert {"tickflow-api", "tickflow-roles"} <= set(jobs)
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    for name in ("prometheus", "grafana"):
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            assert (INFRA / source).exists(), f"{name} mounts {source}, which is not in infra/"
    datasource = yaml.safe_load((INFRA / "grafana" / "provisioning" / "datasources" / "tickflow.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "tickflow-prometheus"


def test_no_file_here_is_left_unchecked() -> None:
    files = {p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files == {
        # the docs site: its pages and generated references are checked by tests/unit/test_docs.py, the build by
        # `make docs` (strict)
        "docs/mkdocs.yml",
        "docs/hooks.py",
        "docs/reference.py",
        "docker-compose.yml",
        "kafka.sh",
        "prometheus/prometheus.yml",
        "grafana/dashboards/tickflow.json",
        "grafana/provisioning/datasources/tickflow.yml",
        "grafana/provisioning/dashboards/tickflow.yml",
    }, sorted(files)

