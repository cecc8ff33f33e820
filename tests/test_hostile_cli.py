"""Careless and hostile command lines: one clear line and exit status 2, never a
traceback, a hang, a crash loop, a value silently changed, or a credential in any output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_es import AuraApp, AuraError
from aura_es.catalog import load_catalog
from aura_es.db import connect
from aura_es.dsn import nats_servers, parse_database_url, redact
from aura_es.ops.collector import DatabaseCollector
from tests.support.chaos import quick_catalog
from tests.support.cli import assert_one_line_error, aura
from tests.support.proxy import proxy_for
from tests.support.workers import CATALOG, ROOT, env_for, start_supervisor, wait_for


def catalog_with(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load(CATALOG.read_text())
    data["projections"][0].update(changes)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_each_careless_command_line_is_one_clear_line(
    tmp_path: Path, cli_env: dict[str, str],
) -> None:
    cases: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
        (("idempotency", "prune", "--older-than", "999999999999d"), ("--older-than", "100")),
        (("replay", "DebateStateProjection", "--since", "99999999999d"), ("--since", "100")),
        (("query", "DebateStateProjection", "--limit", "-1"), ("--limit",)),
        (("workers", "run", "--poll-seconds", "0"), ("--poll-seconds",)),
        (("replay", "DebateStateProjection", "--from-position", str(2**64)),
         ("--from-position",)),
        (("mirror", "verify", "--nats-url", "nats://127.0.0.1:4222,nats://:x"),
         ("entry 2", "NATS URL")),
        (("mirror", "verify", "--nats-url", "nats://127.0.0.1:1",
          "--database-url", "postgresql://postgres@127.0.0.1:1/x"), ("cannot connect",)),
        (("status", "--database-url", "postgresql://h/db?sslmod=require"),
         ("unknown parameter 'sslmod'",)),
        (("nosuch",), ("No such command",)),
    ]
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text('projections: !!python/object/apply:os.system ["echo owned"]\n')
    cases += [
        (("catalog", "validate", str(tagged)), ("not valid YAML",)),
        (("catalog", "validate", str(catalog_with(tmp_path, batch_size=True))),
         ("batch_size",)),
    ]
    for args, needles in cases:
        assert_one_line_error(aura(*args, env=cli_env), *needles)
    slow = {**cli_env, "AURA_ES_WAKE_INTERVAL_MS": "soon"}
    for args in (("workers", "run"), ("mirror", "run", "--stream", "WAKE")):
        assert_one_line_error(aura(*args, env=slow), "AURA_ES_WAKE_INTERVAL_MS='soon'")
    bad = tmp_path / "bad"
    bad.mkdir()
    broken = catalog_with(bad, error_handling={"transient_exceptions": ["nosuch:Exc"]})
    for args in (("catalog", "validate", str(broken)), ("workers", "run", "--catalog",
                                                         str(broken))):
        assert_one_line_error(aura(*args, env=cli_env), "nosuch:Exc")


def test_tls_settings_in_the_url_reach_the_connection(db_url: str) -> None:
    """`verify-full` against a server without TLS must fail, as psql does; it used to be
    dropped and the connection made in clear. (Over TCP: libpq never uses TLS on a Unix
    socket, so the test server is reached through a TCP proxy.)"""
    proxy, via_tcp = proxy_for(db_url)
    try:
        with connect(via_tcp) as conn:  # the plain URL works over the proxy
            assert conn.execute("SELECT 1").fetchone() == (1,)
        url = via_tcp + "?sslmode=verify-full&sslrootcert=/nonexistent/root.crt"
        result = aura("db", "init", "--database-url", url)
        assert_one_line_error(result, "cannot connect")
        params = parse_database_url(url).params
        assert (params["sslmode"], params["sslrootcert"]) == (
            "verify-full", "/nonexistent/root.crt")
        with pytest.raises(AuraError):
            AuraApp(url)
        with pytest.raises(AuraError, match="SSL"):
            connect(via_tcp + "?sslmode=require")
    finally:
        proxy.close()
    options = db_url + ("&" if "?" in db_url else "?") + "application_name=from-the-url"
    with connect(options) as conn:
        assert conn.execute("SHOW application_name").fetchone() == ("from-the-url",)
    app = AuraApp(options, pool_size=1)
    with app._cursor() as cur:
        shown = cur.execute("SHOW application_name").fetchone()
        assert shown is not None and shown["application_name"] == "from-the-url"
    app.close()


# With a digit and a capital, so a secret is never a word the message says anyway
# (hypothesis once found "database").
secrets_ = st.text(alphabet="abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789",
                   min_size=8, max_size=24).filter(
    lambda s: any(c.isdigit() for c in s) and any(c.isupper() for c in s))
FORMS = [
    "postgresql://user:{s}@127.0.0.1:1/db",
    "postgresql://user@127.0.0.1:1/db?password={s}",
    "postgresql://user@127.0.0.1:1/db?sslmode=disable&password={s}&connect_timeout=1",
    "host=127.0.0.1 port=1 dbname=db password={s}",
    "host=127.0.0.1 port=1 dbname=db password='{s} x'",
    "postgresql://user:pa%ZZ{s}@127.0.0.1/db",
    "postgresql://user:{s}@127.0.0.1:99999/db",
    "postgresql://user:{s}@[::1/db",
    "mysql://user:{s}@127.0.0.1/db",
    "postgresql://user:{s}@127.0.0.1:1/db?sslmod=x",
]


@settings(max_examples=60, deadline=None)
@given(secret=secrets_, form=st.sampled_from(FORMS))
def test_no_error_about_a_database_url_quotes_its_password(secret: str, form: str) -> None:
    url = form.format(s=secret)
    assert secret not in redact(url)
    with pytest.raises(AuraError) as error:
        connect(url)
    assert secret not in str(error.value)
    health = DatabaseCollector(lambda: connect(url), [], 300).health()
    assert secret not in json.dumps(health.as_dict())


@settings(max_examples=40, deadline=None)
@given(secret=secrets_, form=st.sampled_from([
    "nats://{s}@127.0.0.1:1", "nats://u:{s}@127.0.0.1:1", "tls://u:{s}@h:1,nats://{s}@h:2",
    "nats://{s}@127.0.0.1:notaport", "nats://u:{s}@:1",
]))
def test_no_error_about_a_nats_url_quotes_its_credential(secret: str, form: str) -> None:
    url = form.format(s=secret)
    assert secret not in redact(url)
    try:
        nats_servers(url)
    except AuraError as e:
        assert secret not in str(e)


@pytest.mark.slow
def test_credentials_never_reach_the_terminal_or_the_logs(cli_env: dict[str, str]) -> None:
    secret = "s3cretTOKENvalue"
    for url in (f"postgresql://u:{secret}@127.0.0.1:1/db", f"postgresql://u:pa%ZZ{secret}@h/d",
                f"host=127.0.0.1 port=1 password={secret}"):
        result = aura("db", "init", "--database-url", url, "--json")
        assert result.returncode == 2 and secret not in result.stdout + result.stderr
    relay = aura("mirror", "run", "--nats-url", f"nats://{secret}@127.0.0.1:1", env=cli_env,
                 timeout=60)
    assert_one_line_error(relay, "no NATS server answers")
    assert secret not in relay.stdout + relay.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_stop_when_their_supervisor_is_killed(
    app: AuraApp, tmp_path: Path,
) -> None:
    log = tmp_path / "workers.log"
    supervisor = start_supervisor(app.database_url, "DebateStateProjection",
                                  "LLMSpendProjection", log=log)
    try:
        with app.connect() as conn:
            def workers() -> list[int]:
                return [r[0] for r in conn.execute(
                    "SELECT pid FROM aura_projection_workers WHERE role = 'active'"
                    " AND heartbeat_at > now() - interval '3 seconds'")]
            pids = wait_for("two active workers", lambda: len(workers()) == 2 and workers(), 60)
            supervisor.kill()
            supervisor.wait()
            wait_for("the orphaned workers to stop", lambda: not any(
                _alive(pid) for pid in pids), 15)
            assert workers() == []
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines and all(json.loads(line) for line in lines), "a log line is not JSON"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not running
        return stat.read().split(") ", 1)[1][0] != "Z"


WRITER = """
import sys
from aura_es.log import get_logger
log = get_logger(writer=sys.argv[1])
for i in range(300):
    log.info("line", n=i, filler="x" * int(sys.argv[2]))
"""


def test_log_lines_from_many_processes_on_one_pipe_stay_whole() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    read, write = os.pipe()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(n), str(size)],
                                stderr=write, env=env)
               for n, size in enumerate([100, 3000, 9000, 100_000])]
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read()
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0, 0]
    lines = output.decode().splitlines()
    assert len(lines) == 1200
    parsed = [json.loads(line) for line in lines]
    assert all(len(line.encode()) < 4096 for line in lines)
    assert {p["writer"] for p in parsed} == {"0", "1", "2", "3"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_open_breaker_is_reported_with_its_next_probe_not_as_stopped(
    app: AuraApp, tmp_path: Path,
) -> None:
    catalog = quick_catalog(tmp_path, handler="tests.support.poison:DependencyDown")
    data = yaml.safe_load(catalog.read_text())
    data["projections"][0]["error_handling"]["circuit_breaker"] = {
        "failure_threshold": 1, "recovery_timeout": 30}
    catalog.write_text(yaml.safe_dump(data))
    app.start_debate("t", ["a"], idempotency_key="k")
    supervisor = start_supervisor(app.database_url, "DebateStateProjection", catalog=catalog,
                                  log=tmp_path / "log")
    env = env_for(app.database_url)

    def row() -> dict[str, object]:
        status = aura("status", "--json", "--catalog", str(catalog), env=env)
        return dict(json.loads(status.stdout)["projections"][0])

    try:
        first = wait_for("the breaker to open", lambda: (r := row())["breaker"] == "open" and r)
        assert first["state"] == "running" and 0 < first["next_probe_seconds"] <= 30
        with app.connect() as conn:  # the worker's connection dies; the breaker stays open
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        waiting = wait_for("the waiting worker", lambda: (r := row())["state"] ==
                           "breaker_open" and r, 30)
        assert 0 < waiting["next_probe_seconds"] <= 30
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=60)


def test_the_shipped_catalog_is_valid() -> None:
    assert load_catalog(CATALOG).projections
