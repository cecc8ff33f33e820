"""G11: across a PostgreSQL failover (the standby promoted) and a restart, keyed commands
succeed without the caller retrying, and nothing acknowledged is lost or doubled
(synchronous replication). Private servers from the failover harness
(``aura_es.testing.cluster``), never the shared ones."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from prometheus_client import REGISTRY

from aura_es import AuraApp, ServiceUnavailable
from aura_es.db import connect
from aura_es.testing.cluster import NatsCluster, PostgresPair
from tests.support.chaos import writer
from tests.support.cli import assert_one_line_error, aura
from tests.support.logs import LogLines
from tests.support.mirror import running_relay, start_relay, verify
from tests.support.workers import (
    ALL,
    ROOT,
    assert_read_models_equal_fold,
    caught_up,
    env_for,
    start_supervisor,
    wait_for,
)

pytestmark = [pytest.mark.failover, pytest.mark.timeout(300)]


def stored_keys(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT idempotency_key FROM aura_idempotency ORDER BY idempotency_key")]


def test_a_keyed_command_rides_out_a_failover_without_the_caller_retrying(
    aura_pg_pair: PostgresPair,
) -> None:
    app = AuraApp(aura_pg_pair.url(), pool_size=2)
    try:
        first = app.start_debate("before", ["a"], idempotency_key="before")
        old = aura_pg_pair.kill_primary()
        # The standby is promoted a second later, while the command waits for it.
        promoter = threading.Timer(1.0, aura_pg_pair.promote_standby)
        promoter.start()
        started = time.monotonic()
        second = app.start_debate("after", ["a"], idempotency_key="after")
        waited = time.monotonic() - started
        promoter.join()
        assert aura_pg_pair.primary is not old
        assert app.get_debate(first).topic == "before"  # acknowledged before: kept
        assert app.get_debate(second).topic == "after"
        assert waited < app.outage_seconds
        # The same key again is the same command: answered, not stored twice.
        assert app.start_debate("after", ["a"], idempotency_key="after") == second
        assert stored_keys(aura_pg_pair.url()) == ["after", "before"]
    finally:
        app.close()


def test_a_restart_is_invisible_to_the_next_keyed_command(aura_pg_pair: PostgresPair) -> None:
    app = AuraApp(aura_pg_pair.url(), pool_size=2)
    try:
        debate = app.start_debate("t", ["a"], idempotency_key="k1")
        retries = REGISTRY.get_sample_value("aura_command_outage_retries_total")
        aura_pg_pair.restart(aura_pg_pair.primary, "fast")  # every pooled connection dies
        app.add_argument(debate, "a", "for", "after the restart", round=1,
                         idempotency_key="k2")
        assert app.get_debate(debate).arguments == 1
        # The pool's check saw the dead connections (their server said goodbye) and
        # handed out a new one: the command did not even need its outage retry.
        assert REGISTRY.get_sample_value("aura_command_outage_retries_total") == retries
    finally:
        app.close()


def test_an_outage_longer_than_the_deadline_is_one_clear_error(
    aura_pg_pair: PostgresPair,
) -> None:
    app = AuraApp(aura_pg_pair.url(), pool_size=1)
    app.outage_seconds = 2.0
    try:
        app.start_debate("t", ["a"], idempotency_key="k1")
        aura_pg_pair.kill_primary()  # and no promotion: nobody takes writes
        with pytest.raises(ServiceUnavailable) as refused:
            app.start_debate("u", ["a"], idempotency_key="k2")
        assert "\n" not in str(refused.value)
    finally:
        app.close()


# -- the mirror across failovers --------------------------------------------------------


def start_debates(url: str, prefix: str, count: int) -> None:
    app = AuraApp(url, pool_size=1)
    try:
        for i in range(count):
            app.start_debate(f"{prefix} {i}", ["a"], idempotency_key=f"{prefix}-{i}")
    finally:
        app.close()


def stored(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM aura_events").fetchone()
        return int(row[0]) if row else 0


def relay_waits_for_its_standby(url: str) -> bool:
    """The relay's session is inside the standby guard (asking how far standbys are)."""
    with connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND query LIKE '%%flush_lsn <%%'").fetchone() != (0,)


@pytest.mark.aura_async_replication
def test_an_asynchronous_failover_leaves_no_event_on_the_stream_the_store_lost(
    aura_pg_pair: PostgresPair, private_nats: tuple[str, Path],
) -> None:
    """The issue's reproduction: the standby's WAL receiver stalls, commands go on, the
    primary dies and the stale standby is promoted. The relay (on the multi-host URL)
    published nothing the standby had not flushed, so the stream holds no phantom, and
    what is written after the promotion reaches it."""
    url, nats_url = aura_pg_pair.url(), private_nats[0]
    start_debates(url, "before", 20)
    with running_relay(url, nats_url, "FAILOVER") as relay:
        lines = LogLines(relay)
        wait_for("the first 20 on the stream", lambda: verify_ok(url, nats_url, 20))
        aura_pg_pair.stall_replication()
        start_debates(url, "lost", 30)  # acknowledged by the primary alone
        wait_for("the relay to wait for its standby", lambda: relay_waits_for_its_standby(url))
        aura_pg_pair.crash_primary()
        aura_pg_pair.promote_standby()
        assert stored(url) == 20  # the 30 were never on the standby: lost with the primary
        start_debates(url, "after", 10)
        wait_for("the stream to equal the new primary", lambda: verify_ok(url, nats_url, 30))
        report = verify(url, nats_url, "FAILOVER")
        assert report["phantoms"] == [] and report["missing"] == []
    assert "relaying" in lines.text()


def verify_ok(url: str, nats_url: str, events: int, stream: str = "FAILOVER") -> bool:
    report = verify_if_there(url, nats_url, stream)
    return bool(report and report["ok"] and report["stream_messages"]
                == report["stored_events"] == events)


def verify_if_there(url: str, nats_url: str, stream: str) -> dict[str, Any] | None:
    """verify's report, or None while the stream cannot be read (the relay has not made it
    yet, or the cluster is electing its leader)."""
    result = aura("mirror", "verify", "--nats-url", nats_url, "--stream", stream,
                  "--subject-prefix", stream.lower(), "--json", env=env_for(url))
    if result.returncode == 2 and "cannot read stream" in result.stderr:
        return None
    assert result.returncode in (0, 1), result.stderr
    return dict(json.loads(result.stdout))


def test_a_relay_on_a_store_behind_its_stream_stops_naming_the_first_phantom(
    db_url: str, private_nats: tuple[str, Path],
) -> None:
    """As after restoring a backup taken before the last events: the stream holds events
    the store lacks. The relay stops with one line; verify lists them as phantoms."""
    nats_url = private_nats[0]
    start_debates(db_url, "kept", 12)
    relay = start_relay(db_url, nats_url, "RESTORED")
    wait_for("the stream", lambda: published(db_url, nats_url, "RESTORED") == 12)
    relay.send_signal(signal.SIGTERM)
    relay.wait(timeout=60)
    with connect(db_url) as conn:  # the backup: the last 4 events never happened
        gone = [r[0] for r in conn.execute(
            "DELETE FROM aura_events WHERE notification_id IN (SELECT notification_id FROM"
            " aura_events ORDER BY notification_id DESC LIMIT 4) RETURNING notification_id")]
    stopped = aura("mirror", "run", "--nats-url", nats_url, "--stream", "RESTORED",
                   "--subject-prefix", "restored", env=env_for(db_url), timeout=60)
    assert_one_line_error(stopped, f"from position {min(gone)}", "Nothing was published",
                          "mirror verify")
    report = verify(db_url, nats_url, "RESTORED")
    assert sorted(report["phantoms"]) == sorted(gone) and not report["ok"]


# -- a JetStream cluster ----------------------------------------------------------------


def stream_holds_the_store(url: str, nats_url: str, stream: str) -> bool:
    report = verify_if_there(url, nats_url, stream)
    return bool(report and report["ok"]
                and report["stream_messages"] == report["stored_events"] > 0)


def published(url: str, nats_url: str, stream: str) -> int:
    report = verify_if_there(url, nats_url, stream)
    return int(report["stream_messages"]) if report else 0


def test_the_stream_leader_killed_and_restarted_loses_and_doubles_nothing(
    db_url: str, aura_nats_cluster: NatsCluster,
) -> None:
    """An R3 stream; its leader node SIGKILLed while the relay publishes, restarted 10 s
    later: every event once, in order."""
    nats_url = aura_nats_cluster.url
    writers = [writer(db_url, seed, 40) for seed in (21, 22)]
    with running_relay(db_url, nats_url, "CLUSTERED", "--replicas", "3"):
        wait_for("the relay to publish", lambda: published(db_url, nats_url, "CLUSTERED") > 20)
        leader = aura_nats_cluster.stream_leader("CLUSTERED")
        aura_nats_cluster.kill_node(leader)
        restart = threading.Timer(10.0, aura_nats_cluster.start_node, args=(leader,))
        restart.start()
        assert [w.wait(timeout=180) for w in writers] == [0, 0]
        restart.join()
        wait_for("the stream to hold the store", lambda: stream_holds_the_store(
            db_url, nats_url, "CLUSTERED"), timeout=120)


def test_a_cluster_killed_whole_gets_back_what_it_lost(
    db_url: str, aura_nats_cluster: NatsCluster,
) -> None:
    """All three nodes SIGKILLed while the relay publishes (JetStream flushes to disk
    every two minutes by default, so a coordinated crash may lose acknowledged
    messages): once they are back, whatever the stream lost is published again."""
    nats_url = aura_nats_cluster.url
    load = writer(db_url, 23, 60)
    with running_relay(db_url, nats_url, "CRASHED", "--replicas", "3"):
        wait_for("the relay to publish", lambda: published(db_url, nats_url, "CRASHED") > 20)
        aura_nats_cluster.kill_all()
        for node in range(aura_nats_cluster.size):
            aura_nats_cluster.start_node(node)
        assert load.wait(timeout=180) == 0
        wait_for("the stream to hold the store again", lambda: stream_holds_the_store(
            db_url, nats_url, "CRASHED"), timeout=180)


def test_an_idle_relay_publishes_again_what_its_stream_lost(
    db_url: str, private_nats: tuple[str, Path],
) -> None:
    """The stream's tail goes back while nothing new is written (as after a cluster lost
    messages it had acknowledged): within a few seconds the idle relay notices and
    publishes the lost events again; the stream equals the store."""
    nats_url = private_nats[0]
    start_debates(db_url, "kept", 10)
    with running_relay(db_url, nats_url, "SHRUNK") as relay:
        lines = LogLines(relay)
        wait_for("the stream", lambda: published(db_url, nats_url, "SHRUNK") == 10)
        asyncio.run(keep_only_the_first(nats_url, "SHRUNK", 6))
        wait_for("the lost events again", lambda: stream_holds_the_store(
            db_url, nats_url, "SHRUNK"), timeout=60)
        # Noticed by the idle check (or, if it looked while the stream was being made
        # again, by the failed look): either way from the stream's own tail.
        text = lines.text()
        assert ("the stream lost messages it had confirmed" in text
                or text.count('"event": "relaying"') >= 2), text[-2000:]


async def keep_only_the_first(nats_url: str, stream: str, count: int) -> None:
    """The stream again, holding its first ``count`` messages only (its configuration
    and the messages as they were)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        kept = [await js.get_msg(stream, seq) for seq in range(1, count + 1)]
        await js.delete_stream(stream)
        await js.add_stream(info.config)
        for message in kept:
            # As stored, less the atomic batch's own headers (they would open a batch).
            headers = {k: v for k, v in (message.headers or {}).items()
                       if not k.startswith(("Nats-Batch", "Nats-Expected"))}
            assert message.subject is not None
            await js.publish(message.subject, message.data or b"", headers=headers)
    finally:
        await nc.close()


# -- everything at once -------------------------------------------------------------------


def paced_writer(url: str, seed: int, rate: float, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aura_es.cli", "load", "--seed", str(seed), "--rate",
         str(rate), "--duration", str(seconds), "--json"],
        env=env_for(url), cwd=ROOT, text=True, stdout=subprocess.PIPE)


@pytest.mark.timeout(600)
def test_a_synchronous_failover_under_load_loses_and_doubles_nothing(
    aura_pg_pair: PostgresPair, aura_nats_cluster: NatsCluster, tmp_path: Path,
) -> None:
    """4 writer processes sending keyed commands at a steady 40/s in all, the workers and
    the relay (R3 stream) running on the multi-host URL; the primary killed and the
    standby promoted a second later, then the stream's leader node killed and restarted.
    Every command succeeds without its caller retrying (within the outage deadline),
    each is stored exactly once, the read models equal a fold of the new primary's
    store, and the stream equals it; the first command after the promotion succeeds
    within 5 s. Nothing was restarted."""
    url, nats_url = aura_pg_pair.url(), aura_nats_cluster.url
    supervisor = start_supervisor(url, *ALL, log=tmp_path / "workers.log")
    relay = start_relay(url, nats_url, "FAILOVER", "--replicas", "3")
    writers = [paced_writer(url, seed, 10, 20) for seed in (31, 32, 33, 34)]
    try:
        with connect(url) as conn:
            wait_for("the workers and the relay to run", lambda: caught_up(conn)
                     and published(url, nats_url, "FAILOVER") > 0, timeout=60)
        aura_pg_pair.kill_primary()
        killed = time.monotonic()
        time.sleep(1.0)  # pacing: the promotion comes a second after the kill
        aura_pg_pair.promote_standby()
        promoted = time.monotonic()
        leader = aura_nats_cluster.stream_leader("FAILOVER")
        aura_nats_cluster.kill_node(leader)
        time.sleep(2.0)  # pacing: the node stays away while the relay publishes
        aura_nats_cluster.start_node(leader)
        reports = [json.loads(w.communicate(timeout=240)[0]) for w in writers]
        assert [w.returncode for w in writers] == [0, 0, 0, 0]
        assert all(r["failed"] == 0 for r in reports), reports
        # Every acknowledged command is stored once, on the new primary.
        with connect(url) as conn:
            keys = conn.execute("SELECT count(*), count(DISTINCT idempotency_key)"
                                " FROM aura_idempotency").fetchone()
            assert keys == (sum(r["succeeded"] for r in reports),) * 2
            wait_for("the workers to catch up on the new primary", lambda: caught_up(conn),
                     timeout=120)
            assert_read_models_equal_fold(conn)
        wait_for("the stream to equal the new primary", lambda: stream_holds_the_store(
            url, nats_url, "FAILOVER"), timeout=120)
        # Writers saw the store away from the kill until a little after the promotion.
        outage = max(r["longest_unavailability_seconds"] for r in reports)
        assert outage < (promoted - killed) + 5.0, reports
    finally:
        for process in (supervisor, relay, *writers):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (supervisor, relay, *writers):
            process.wait(timeout=60)


def test_status_watch_rides_out_a_restart(aura_pg_pair: PostgresPair, tmp_path: Path) -> None:
    """`status --watch` keeps watching across a restart of the database (it reconnects),
    and ends when the workers, started after it, have caught up."""
    url = aura_pg_pair.url()
    start_debates(url, "watched", 5)
    watching = subprocess.Popen(
        [sys.executable, "-m", "aura_es.cli", "status", "--watch", "--until-caught-up",
         "--timeout", "120"], env=env_for(url), cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with connect(url) as conn:
        # The only other client is the watch (nothing else runs yet).
        wait_for("the watch to look", lambda: conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'").fetchone() != (0,))
    aura_pg_pair.restart(aura_pg_pair.primary, "fast")
    supervisor = start_supervisor(url, *ALL, log=tmp_path / "workers.log")
    try:
        out, err = watching.communicate(timeout=150)
        assert watching.returncode == 0, err
        assert "DebateStateProjection" in out
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=60)
