"""Observability: the supervisor's /metrics agree with what the workers really did and
with the DLQ rows; /health follows the database; logs never show a password; spans
wrap appends and batches when OpenTelemetry is there and cost nothing when not."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from aura_es import embedded
from aura_es.app import AuraApp
from aura_es.catalog import load_catalog
from aura_es.db import connect
from aura_es.observability import tracing
from aura_es.testing.servers import PostgresServer
from aura_es.worker.shutdown import Shutdown
from aura_es.worker.worker import Worker
from tests.support.chaos import poisoned_catalog, quick_catalog, start_again, stop, writer
from tests.support.ledger import open_ledger
from tests.support.workers import (
    ALL,
    CATALOG,
    ROOT,
    caught_up,
    env_for,
    head,
    positions,
    wait_for,
)

DEBATES = "DebateStateProjection"


def start_with_metrics(
    db_url: str, catalog: Path, log: Path, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aura_es.cli", "workers", "run", "--catalog", str(catalog),
         "--poll-seconds", "0.5", "--metrics-port", "0", *extra],
        env=env_for(db_url), cwd=ROOT, text=True, stderr=log.open("w"),
        start_new_session=True,
    )


def metrics_port(log: Path) -> int:
    def port() -> int | None:
        for line in log.read_text().splitlines():
            if '"serving /metrics and /health"' in line:
                return int(json.loads(line)["port"])
        return None

    found: int = wait_for("the metrics endpoint", port, timeout=30)
    return found


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, ls), v in found.items()
               if n == name and all((k, val) in ls for k, val in labels.items()))


@pytest.mark.slow
def test_metrics_agree_with_the_events_processed_and_the_dlq_rows(
    chaos_db: str, tmp_path: Path
) -> None:
    catalog = poisoned_catalog(tmp_path)
    log = tmp_path / "workers.log"
    supervisor = start_with_metrics(chaos_db, catalog, log)
    try:
        port = metrics_port(log)
        load = writer(chaos_db, 5, 150, poison_rate=0.05)
        assert load.wait(timeout=120) == 0
        with connect(chaos_db) as conn:
            wait_for("catch-up", lambda: caught_up(conn), timeout=90)
            letters = conn.execute(
                "SELECT count(*) FROM aura_dead_letters WHERE projection = %s AND status ="
                " 'parked'", (DEBATES,)).fetchone()
            parked = conn.execute("SELECT count(*) FROM aura_dead_letter_parked"
                                  " WHERE projection = %s", (DEBATES,)).fetchone()
            applied = dict(conn.execute(
                "SELECT projection, events_applied FROM aura_projection_checkpoints"))
            per_topic = dict(conn.execute(
                "SELECT topic, count(*) FROM aura_events GROUP BY topic"))
        assert letters and letters[0] > 0, "the load was meant to poison some debates"
        found = samples(get(port, "/metrics")[1])
    finally:
        stop(supervisor)
    spec_topics = {s.name: s.source_events for s in load_catalog(catalog).projections}
    for name in ALL:
        processed = total(found, "aura_events_processed_total", projection_name=name,
                          status="processed")
        assert processed == applied[name], name
        timed = total(found, "aura_event_processing_duration_seconds_count",
                      projection_name=name)
        assert timed == processed, name
        every = total(found, "aura_events_processed_total", projection_name=name)
        assert every == sum(per_topic.get(t, 0) for t in spec_topics[name]), name
        assert found[("aura_projection_lag_events", (("projection_name", name),))] == 0
        assert found[("aura_projection_up", (("projection_name", name),))] == 1
    assert total(found, "aura_events_processed_total", projection_name=DEBATES,
                 status="dead_lettered") == letters[0]
    assert parked is not None and total(
        found, "aura_events_processed_total", projection_name=DEBATES, status="parked"
    ) == parked[0] == found[("aura_dlq_parked_events", (("projection_name", DEBATES),))]
    assert found[("aura_dlq_depth", (("projection_name", DEBATES),))] == letters[0]
    assert total(found, "aura_projection_errors_total", projection_name=DEBATES,
                 error_type="PoisonError") >= letters[0]
    assert found[("aura_database_up", ())] == 1
    assert 0 < found[("aura_system_health_score", ())] < 100  # open dead letters cost points
    assert found[("aura_active_debates", ())] >= 0


@pytest.mark.slow
def test_health_is_unready_while_the_database_is_stopped_and_ready_when_it_is_back(
    private_pg: tuple[PostgresServer, Path], chaos_db: str, tmp_path: Path
) -> None:
    app = AuraApp(chaos_db, pool_size=1)
    app.start_debate("health", ["a", "b"], idempotency_key="health-1")
    app.close()
    log = tmp_path / "workers.log"
    supervisor = start_with_metrics(chaos_db, quick_catalog(tmp_path), log)
    try:
        port = metrics_port(log)
        wait_for("ready", lambda: get(port, "/health")[0] == 200, timeout=60)
        assert json.loads(get(port, "/health")[1]) == {"ready": True, "score": 100.0,
                                                       "reasons": []}
        embedded.stop_postgres(private_pg[1])
        try:
            status, body = get(port, "/health")
            assert status == 503
            health = json.loads(body)
            assert health["ready"] is False and health["score"] == 0
            assert health["reasons"][0].startswith("database does not answer")
            down = samples(get(port, "/metrics")[1])
            assert down[("aura_database_up", ())] == 0
            assert down[("aura_system_health_score", ())] == 0
        finally:
            start_again(private_pg[1])
        wait_for("ready again", lambda: get(port, "/health")[0] == 200, timeout=60)
    finally:
        stop(supervisor)


def test_health_names_a_projection_without_a_live_worker(db_url: str, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    document = yaml.safe_load(CATALOG.read_text())
    document["projections"][2]["handler"] = "tests.support.poison:CannotStart"
    catalog.write_text(yaml.safe_dump(document))
    log = tmp_path / "workers.log"
    supervisor = start_with_metrics(db_url, catalog, log)
    try:
        port = metrics_port(log)
        wait_for("the healthy workers", lambda: len(
            json.loads(get(port, "/health")[1])["reasons"]) == 1, timeout=30)
        status, body = get(port, "/health")
        assert status == 503
        (reason,) = json.loads(body)["reasons"]
        assert reason.startswith("LLMSpendProjection: no live active worker")
        assert get(port, "/nowhere")[0] == 404
    finally:
        stop(supervisor)


def test_a_metrics_port_in_use_is_exit_2(db_url: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "aura_es.cli", "workers", "run", "--metrics-port",
             str(port)], env=env_for(db_url), cwd=ROOT, capture_output=True, text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"--metrics-port {port}: cannot listen" in done.stderr


# -- logs ---------------------------------------------------------------------------------------


def test_no_password_reaches_output_or_logs(pg_server: PostgresServer, db_url: str) -> None:
    secret = "s3cr3t-Pa55"
    with_password = db_url.replace("postgres@", f"postgres:{secret}@", 1)
    assert secret in with_password
    wrong_db = re.sub(r"/aura_test_[^?]+", "/no_such_db", with_password)
    outputs = []
    for args, url in ((["db", "init"], with_password), (["status"], wrong_db)):
        done = subprocess.run([sys.executable, "-m", "aura_es.cli", *args],
                              env=env_for(url), cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        outputs.append(done.stdout + done.stderr)
    assert "no_such_db" in outputs[1]  # the error does name the database it tried
    logged = subprocess.run(
        [sys.executable, "-c",
         "from aura_es.log import get_logger; import sys;"
         "get_logger(projection='p').error('cannot run', error=sys.argv[1],"
         " dsn=sys.argv[2])", f"cannot connect to {with_password}",
         f"host=/tmp password={secret} dbname=x"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    outputs.append(logged.stderr)
    assert '"projection": "p"' in logged.stderr
    for output in outputs:
        assert secret not in output, output


# -- tracing ------------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[Any]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    exporter.clear()


def test_spans_wrap_appends_and_projection_batches(app: AuraApp, spans: Any) -> None:
    assert tracing.enabled()
    app.start_debate("traced", ["a", "b"], idempotency_key="traced-1")
    spec = load_catalog(CATALOG).get(DEBATES)
    shutdown = Shutdown()
    worker = threading.Thread(target=Worker(app.database_url, spec, shutdown,
                                            poll_seconds=0.1).run)
    worker.start()
    try:
        with connect(app.database_url) as conn:
            wait_for("the worker", lambda: positions(conn).get(DEBATES) == head(conn), 30)
    finally:
        shutdown.request()
        worker.join(30)
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert finished["aura.append"].attributes["command"] == "start_debate"
    batches = [s for s in spans.get_finished_spans() if s.name == "aura.projection.batch"]
    assert any(s.attributes["projection"] == DEBATES and s.attributes["applied"] == 1
               for s in batches)


def test_without_opentelemetry_a_span_is_one_shared_null_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "_start_span", None)
    first, second = tracing.span("a", x=1), tracing.span("b")
    assert first is second and not tracing.enabled()
    with first as value:
        assert value is None


def test_until_a_tracer_provider_is_installed_a_span_is_the_null_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "_tracing", False)
    monkeypatch.setattr(tracing, "_provider_installed", lambda: False)
    assert tracing.span("aura.append", command="x") is tracing.span("b")
    monkeypatch.setattr(tracing, "_provider_installed", lambda: True)
    opened = tracing.span("aura.append", command="x")
    assert opened is not tracing.span("b") and tracing._tracing


def test_a_tracer_provider_named_by_the_environment_is_used_without_code() -> None:
    """The API loads a provider named by ``OTEL_PYTHON_TRACER_PROVIDER`` on first use;
    spans must be real then, though no provider was ever set in code."""
    probe = ("from aura_es.observability import tracing\n"
             "print(tracing.span('aura.append', command='x') is tracing.span('b'))\n")
    env = {**os.environ, "OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}
    named = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                           text=True, timeout=60, check=True)
    env.pop("OTEL_PYTHON_TRACER_PROVIDER")
    unnamed = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, timeout=60, check=True)
    assert (named.stdout.strip(), unnamed.stdout.strip()) == ("False", "True")


APPEND_STEPS = st.lists(st.sampled_from(["start", "retry", "argue", "batch", "bulk"]),
                        min_size=1, max_size=10)


def _appended_samples() -> dict[str, float]:
    return {s.labels["event_type"]: s.value for m in REGISTRY.collect()
            if m.name == "aura_events_appended" for s in m.samples
            if s.name == "aura_events_appended_total"}


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=APPEND_STEPS)
def test_the_appended_counter_counts_every_stored_event_once_by_type(
        app: AuraApp, steps: list[str]) -> None:
    """``aura_events_appended_total`` grows by exactly what the log gained, per event
    type, whichever way the events came (one command, a retry that stores nothing, a
    batch, a long command): read from the registry as a scrape reads it."""
    run = uuid4().hex
    debate = app.start_debate("counted", ["a"], idempotency_key=f"{run}:setup")
    start, before = app.head_position(), _appended_samples()
    for i, step in enumerate(steps):
        if step in ("start", "retry"):
            key = f"{run}:{'same' if step == 'retry' else i}"
            app.start_debate("t", ["a"], idempotency_key=key)
        elif step == "argue":
            app.add_argument(debate, "a", "for", "words", round=1, idempotency_key=f"{run}:{i}")
        elif step == "batch":
            app.execute_many([app.request_llm_call_command("acme", "p", "m", j,
                                                           idempotency_key=f"{run}:{i}:{j}")
                              for j in range(3)])
        else:
            app.execute(open_ledger(f"{run}:{i}", [1.0] * 70))  # in chunks
    with app.connect() as conn:
        stored = dict(conn.execute(
            "SELECT topic, count(*) FROM aura_events WHERE notification_id > %s GROUP BY topic",
            (start,)).fetchall())
    after = _appended_samples()
    grown = {t: after[t] - before.get(t, 0.0) for t in after if after[t] != before.get(t, 0.0)}
    assert grown == {t: float(n) for t, n in stored.items()}
