"""compose.yaml and its Prometheus and Grafana files, without a Docker engine: the files
parse, every service command is a real `aura-es` command line, the alert rules pass
promtool (check and unit tests) where it is installed, and every query names a metric
the workers really expose."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import aura_es.observability.metrics  # noqa: F401  (the worker metrics, in REGISTRY)
from aura_es.catalog import load_catalog
from aura_es.cli.main import app
from aura_es.db import connect
from aura_es.ops.collector import DatabaseCollector
from aura_es.projection.engine.engine import Engine
from tests.support.workers import CATALOG, ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = json.loads((DEPLOY / "grafana/dashboards/aura-overview.json").read_text())
PROMETHEUS_OWN = {"up"}


def accepts(args: list[str]) -> bool:
    """Does ``aura-es ARGS`` name a real command whose options all exist? ``--help`` after
    them stops it before it runs; an unknown command or option is a usage error first."""
    result = CliRunner().invoke(app, [*args, "--help"])
    return result.exit_code == 0 and "Usage: aura-es " + " ".join(
        a for a in args if not a.startswith("-") and not a[0].isdigit() and "." not in a
    ) in " ".join(result.output.split())


def test_every_aura_service_runs_a_real_command_line() -> None:
    services = COMPOSE["services"]
    assert {"postgres", "nats", "db-init", "workers", "mirror", "prometheus", "grafana"} \
        <= set(services)
    commands = {name: s["command"] for name, s in services.items()
                if isinstance(s.get("command"), list) and s["command"][0] == "aura-es"}
    assert set(commands) == {"db-init", "workers", "mirror"}
    for command in commands.values():
        assert accepts(command[1:]), command
    assert not accepts(["workers", "run", "--no-such-option"])
    assert not accepts(["workers", "sprint"])
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    port = commands["workers"][commands["workers"].index("--metrics-port") + 1]
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"workers:{port}"]
    assert f"{port}:{port}" in services["workers"]["ports"]


def test_every_mounted_file_exists() -> None:
    for service in COMPOSE["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert (ROOT / "Dockerfile").exists()


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian: apt install prometheus)")
def test_alert_rules_pass_promtool_checks_and_unit_tests() -> None:
    for args in (["check", "rules", str(RULES)],
                 ["check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
                 ["test", "rules", str(DEPLOY / "prometheus/alerts.test.yml")]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_plans_alerts_and_ours_are_all_there() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"]
             for r in g["rules"]}
    assert {"HighEventProcessingLatency", "ProjectionLagCritical", "SystemHealthDegraded",
            "DeadLetterQueueGrowing", "CircuitBreakerOpen"} <= set(rules)
    assert all(r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
               for r in rules.values())


def exposed_names(db_url: str) -> set[str]:
    """Every metric name a scrape of the workers' endpoint can carry, from a real
    collector on a database with read models, plus the worker-side families."""
    spec = load_catalog(CATALOG).get("DebateStateProjection")
    with connect(db_url) as conn:
        Engine.attach(conn, spec)  # creates debate_state, so the AURA gauges appear
    collector = DatabaseCollector(lambda: connect(db_url), load_catalog(CATALOG).projections,
                                  300)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(REGISTRY).decode() + generate_latest(registry).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        names.update(family.name + s for s in suffixes.get(family.type, []))
    return names


def test_every_dashboard_and_alert_query_names_a_metric_that_exists(db_url: str) -> None:
    exposed = exposed_names(db_url)
    assert {"aura_projection_lag_seconds", "aura_active_debates", "aura_dlq_depth",
            "aura_events_processed_total", "aura_system_health_score"} <= exposed
    queries = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    queries += [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"]]
    used = {name for q in queries for name in re.findall(r"\b(aura_[a-z_]+|up)\b", q)}
    assert used - exposed - PROMETHEUS_OWN == set()
    titles = " ".join(p["title"].lower() for p in DASHBOARD["panels"])
    for topic in ("processing rate", "lag", "health", "active debates", "dead letters",
                  "circuit breakers", "mirror lag"):
        assert topic in titles, topic


def test_the_dashboard_is_provisioned_from_the_mounted_folder() -> None:
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/aura.yml").read_text())["providers"][0]
    grafana = COMPOSE["services"]["grafana"]["volumes"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in grafana}
    assert Path(mounted[provider["options"]["path"]]).name == "dashboards"
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in DASHBOARD["panels"])
