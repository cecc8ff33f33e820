"""Helpers of the chaos tests: a fast-breaker catalog, writer processes, a clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml

from aura_es.db import connect
from tests.support.workers import CATALOG, ROOT, env_for


def quick_catalog(tmp_path: Path, **debate_overrides: object) -> Path:
    """The shipped catalog with a fast breaker (chaos must recover within the test)."""
    data = yaml.safe_load(CATALOG.read_text())
    for projection in data["projections"]:
        handling = projection.setdefault("error_handling", {})
        handling["circuit_breaker"] = {"failure_threshold": 3, "recovery_timeout": 1}
        handling["retry_policy"] = "fixed"
        if projection["name"] == "DebateStateProjection":
            projection.update(debate_overrides)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def poisoned_catalog(tmp_path: Path) -> Path:
    """The quick catalog with the poison-raising debate handler, one retry, then the DLQ."""
    return quick_catalog(
        tmp_path, handler="tests.support.poison:PoisonedDebates",
        error_handling={"retry_policy": "none", "max_retries": 1, "dead_letter_queue": True},
    )


def writer(url: str, seed: int, debates: int, poison_rate: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.chaos_writer", url, str(seed), str(debates),
         str(poison_rate)],
        env=env_for(url), cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )


def stored_count(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM aura_events").fetchone()
        assert row is not None
        return int(row[0])


def stop(supervisor: subprocess.Popen[str]) -> None:
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=40) == 0


def start_again(pgdata: Path) -> None:
    """Starts a private pgserver instance stopped by the test, with its own options
    (pgserver itself would hand back its cached, stopped server)."""
    import os

    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    user = "pgserver" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-o", f"-h '' -k {pgdata}", "-l", str(pgdata / "restart.log"), "start"],
           pgdata=pgdata, user=user)
