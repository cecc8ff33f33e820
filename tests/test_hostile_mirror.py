"""The mirror under foreign messages and a second store: it never publishes the store
again because of a message it did not write, says so loudly, refuses to mix two stores in
one stream; and nobody without credentials can publish onto the embedded server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from aura_es import AuraApp, embedded, tables
from tests.support.mirror import (
    head,
    mirrored,
    publish,
    start_relay,
    stop,
    stream_messages,
    verify,
)
from tests.support.workers import ROOT, wait_for


def write(app: AuraApp, count: int, prefix: str) -> None:
    commands = [app.start_debate_command(f"{prefix}{i}", ["a"], idempotency_key=f"{prefix}{i}")
                for i in range(count)]
    app.execute_many(commands)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_stray_message_is_skipped_reported_and_never_makes_the_relay_start_over(
    app: AuraApp, private_nats: tuple[str, Path],
) -> None:
    url, _ = private_nats
    write(app, 300, "a")
    relay = start_relay(app.database_url, url, "STRAY")
    wait_for("the first events", lambda: mirrored(app.database_url) == head(app.database_url))
    publish(url, "stray.test.hello", b"hello")  # no headers at all
    publish(url, "stray.test.json", b"{}", headers={"Content-Type": "application/json"})
    write(app, 300, "b")
    wait_for("the later events", lambda: mirrored(app.database_url) == head(app.database_url))
    stderr = stop(relay)
    # Restarted with a foreign message last on the stream: resumes, does not republish.
    publish(url, "stray.test.last", b"bye")
    relay = start_relay(app.database_url, url, "STRAY")
    write(app, 10, "c")
    wait_for("the last events", lambda: mirrored(app.database_url) == head(app.database_url))
    stderr += stop(relay)
    report = verify(app.database_url, url, "STRAY")
    assert report["ok"], report
    assert report["duplicated"] == [] and report["stored_events"] == 610
    assert report["foreign_messages"] == 3
    assert report["stream_messages"] == stream_messages(url, "STRAY") == 613
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    loud = [line for line in lines if line["level"] == "error"
            and "did not publish" in line["event"]]
    assert loud and loud[-1]["foreign_messages"] >= 1


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_second_store_is_refused_on_a_stream_that_holds_another_stores_events(
    app: AuraApp, empty_db_url: str, private_nats: tuple[str, Path],
) -> None:
    url, _ = private_nats
    write(app, 20, "a")
    relay = start_relay(app.database_url, url, "SHARED")
    wait_for("store A", lambda: mirrored(app.database_url) == head(app.database_url))
    stop(relay)
    tables.create_all(empty_db_url)  # db init: a new store, with its own id
    other = AuraApp(empty_db_url, pool_size=1)
    write(other, 5, "b")
    other.close()
    second = start_relay(empty_db_url, url, "SHARED")
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == 2, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "another store" in last, last
    assert stream_messages(url, "SHARED") == 20


def test_the_embedded_nats_server_refuses_clients_without_its_credentials(
    private_nats: tuple[str, Path],
) -> None:
    url, nats_dir = private_nats
    config = nats_dir / "nats.conf"
    assert config.stat().st_mode & 0o077 == 0
    anonymous = "nats://127.0.0.1:" + url.rsplit(":", 1)[1]

    async def connect_as(server: str) -> bool:
        try:
            nc = await nats.connect(server, connect_timeout=2, max_reconnect_attempts=0,
                                    allow_reconnect=False, error_cb=_quiet)
        except Exception:
            return False
        await nc.close()
        return True

    assert asyncio.run(connect_as(url))
    assert not asyncio.run(connect_as(anonymous))


async def _quiet(_: Exception) -> None:
    pass


def test_down_never_signals_a_process_a_stale_pid_file_names() -> None:
    data = Path(tempfile.mkdtemp(prefix="aura-d-", dir="/tmp"))
    (data / "nats").mkdir()
    victim = subprocess.Popen(["sleep", "600"])
    try:
        (data / "nats" / "nats.pid").write_text(str(victim.pid))
        result = subprocess.run(
            [str(Path(sys.executable).parent / "aura-es"), "down", "--data-dir", str(data),
             "--json"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["stopped"]["nats"] is False
        time.sleep(0.2)
        assert victim.poll() is None, "aura-es down killed a process it did not start"
    finally:
        victim.kill()
        victim.wait()
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.timeout(120)
def test_composes_nats_lets_only_the_relay_publish_events(tmp_path: Path) -> None:
    config = (ROOT / "deploy/nats/nats.conf").read_text()
    port, monitor = embedded._free_port(), embedded._free_port()
    config = (config.replace('"/data"', json.dumps(str(tmp_path / "js")))
              .replace("port: 4222", f"port: {port}")
              .replace("http_port: 8222", f"http_port: {monitor}"))
    (tmp_path / "nats.conf").write_text(config)
    env = dict(os.environ, AURA_NATS_RELAY_PASSWORD="relay-pw", AURA_NATS_READER_PASSWORD="rd")
    server = subprocess.Popen([embedded.nats_server_binary(), "-a", "127.0.0.1",
                               "-c", str(tmp_path / "nats.conf")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("nats-server", lambda: embedded._port_open(port), 15)
        relay, reader = (f"nats://relay:relay-pw@127.0.0.1:{port}",
                         f"nats://reader:rd@127.0.0.1:{port}")
        outcome = asyncio.run(_publish_as(relay, reader))
        assert outcome == {"relay": True, "reader": False, "reader_reads": 1}
    finally:
        server.terminate()
        server.wait(timeout=10)


async def _publish_as(relay: str, reader: str) -> dict[str, Any]:
    from nats.js import api

    out: dict[str, Any] = {}
    nc = await nats.connect(relay, error_cb=_quiet)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="AURA_EVENTS", subjects=["aura.events.>"]))
    out["relay"] = (await js.publish("aura.events.debate.started", b"{}")).seq == 1
    await nc.close()
    nc = await nats.connect(reader, error_cb=_quiet)
    js = nc.jetstream()
    try:
        await js.publish("aura.events.debate.started", b"forged", timeout=2)
        out["reader"] = True
    except Exception:
        out["reader"] = False
    out["reader_reads"] = (await js.stream_info("AURA_EVENTS")).state.messages
    await nc.close()
    return out
