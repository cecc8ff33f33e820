"""Running partitioned workers as processes, and reading what they did."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.support.partitioned import TOPICS
from tests.support.workers import ROOT, env_for

__all__ = ["ROOT"]

NAME = "ExactlyOnce"
STORAGE = "exactly_once"


def catalog(tmp_path: Path, partitions: int, *, batch_size: int = 25,
            name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "event_modules": ["aura_es.domain.debate"], "projections": [{
        "name": NAME, "source_events": list(TOPICS), "output_model": "Applied",
        "storage": STORAGE, "handler": "tests.support.partitioned:ExactlyOnce",
        "batch_size": batch_size, "partitions": partitions,
        "error_handling": {"retry_policy": "fixed", "max_retries": 0,
                           "dead_letter_queue": True,
                           "circuit_breaker": {"failure_threshold": 3,
                                               "recovery_timeout": 1}},
    }]}))
    return path


def start_worker(db_url: str, catalog_path: Path, *, lease: float = 2.0,
                 delay_ms: float = 0, log: Path | None = None) -> subprocess.Popen[str]:
    env = env_for(db_url) | {"AURA_ES_LEASE_SECONDS": str(lease),
                             "AURA_TEST_HANDLER_DELAY_MS": str(delay_ms)}
    return subprocess.Popen(
        [sys.executable, "-m", "aura_es.worker.worker", "--projection", NAME,
         "--catalog", str(catalog_path), "--poll-seconds", "0.5"],
        env=env, cwd=ROOT, text=True, stderr=log.open("w") if log else None)


class Processes:
    """Every process a test starts, killed at its end whatever happened."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def add(self, proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused one must be able to die
                proc.kill()
                proc.wait()


def writer(db_url: str, prefix: str, debates: int, events: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.partition_writer", db_url, prefix, str(debates),
         str(events)], env=env_for(db_url), cwd=ROOT, text=True, stdout=subprocess.PIPE)


def owners(conn: psycopg.Connection[Any]) -> dict[int, str | None]:
    return dict(conn.execute(
        "SELECT partition, owner FROM aura_projection_checkpoints WHERE projection = %s",
        (NAME,)))


def owner_pids(conn: psycopg.Connection[Any]) -> dict[int, int | None]:
    """Each partition's owner as a process id (None: no owner)."""
    return dict(conn.execute(
        "SELECT c.partition, w.pid FROM aura_projection_checkpoints c"
        " LEFT JOIN aura_projection_workers w ON w.worker_id = c.owner"
        " WHERE c.projection = %s", (NAME,)))


def topic_events(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM aura_events WHERE topic = ANY(%s)",
                       (list(TOPICS),)).fetchone()
    assert row is not None
    return int(row[0])


def applied(conn: psycopg.Connection[Any]) -> int:
    """Events the handler recorded (0 before the first worker made its tables)."""
    if conn.execute("SELECT to_regclass(%s)", (f"{STORAGE}__applied",)).fetchone() == (None,):
        return 0
    row = conn.execute(f"SELECT count(*) FROM {STORAGE}__applied").fetchone()
    assert row is not None
    return int(row[0])


def dead_letters(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT position, error_type, error_message FROM aura_dead_letters"
                        " WHERE projection = %s", (NAME,)).fetchall()
