"""The partitions one worker holds, and the engine it runs each with.

``rebalance`` looks at the live members of the projection, works out this worker's share
(``deal.py``), gives up what is no longer its own (between batches: its last one has
committed) and claims what is, where nobody live holds it (``state/leases.py``). A claim
that finds the partition held (its owner still alive, or in the middle of a batch) is
tried again at the next rebalance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.runner import Lease
from aura_es.projection.state import leases, presence
from aura_es.worker.deal import share_of

#: How often the worker looks at who is alive, at most.
REBALANCE_SECONDS = 0.5

Attach = Callable[[int, Lease], Engine]


class Holdings:
    def __init__(self, name: str, partitions: int, worker_id: str, lease_seconds: float,
                 attach: Attach, log: Any) -> None:
        self.name = name
        self.partitions = partitions
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.attach = attach
        self.log = log
        self.engines: dict[int, Engine] = {}
        self._looked = 0.0

    def __bool__(self) -> bool:
        return bool(self.engines)

    def __iter__(self) -> Iterator[tuple[int, Engine]]:
        return iter(list(self.engines.items()))

    def due(self) -> bool:
        return time.monotonic() - self._looked >= REBALANCE_SECONDS

    def rebalance(self, conn: psycopg.Connection[Any]) -> bool:
        """Gives up and claims partitions as the deal says; True when anything moved."""
        self._looked = time.monotonic()
        live = [m.worker_id for m in presence.members(conn, self.name, self.lease_seconds)]
        share = share_of(self.worker_id, live, self.partitions)
        moved = False
        for partition in sorted(set(self.engines) - share):
            self.give_up(conn, partition, "dealt to another worker")
            moved = True
        for partition in sorted(share - set(self.engines)):
            epoch = leases.claim(conn, self.name, partition, self.worker_id, live)
            if epoch is None:
                continue
            self.engines[partition] = self.attach(partition, (self.worker_id, epoch))
            self.log.info("partition claimed", partition=partition, epoch=epoch)
            moved = True
        return moved

    def give_up(self, conn: psycopg.Connection[Any], partition: int, reason: str) -> None:
        engine = self.engines.pop(partition)
        lease = engine.runner.lease
        if lease is not None and not conn.broken:
            leases.release(conn, self.name, partition, *lease)
        self.log.info("partition given up", partition=partition, reason=reason)

    def lost(self, partition: int, reason: str) -> None:
        """Another worker holds it now: nothing of ours to release."""
        self.engines.pop(partition, None)
        self.log.warning("partition taken over", partition=partition, reason=reason)

    def forget(self) -> None:
        """Every engine goes (a new connection, a new generation); the leases stay ours
        until claimed again or taken by a live member. The next look is one interval
        away: workers started together see each other before the first deal, instead of
        the first one claiming everything and handing most of it over again."""
        self.engines.clear()
        self._looked = time.monotonic()

    def release_all(self, conn: psycopg.Connection[Any] | None) -> None:
        if conn is not None and not conn.broken:
            leases.release_all(conn, self.worker_id)
        self.engines.clear()
