"""A blue/green rebuild: the next generation of a read model is built beside the live one,
then takes over in one transaction (G7).

1. Claim the projection's replay lock; resume this definition's unfinished rebuild or
   start generation N into ``<storage>__g<N>`` with its own checkpoint (``name@gN``).
2. Catch up from position 0 with the same poison handling as a worker (its own DLQ
   entries), while the live workers keep serving and updating generation N-1. A
   partitioned projection's shadow is split like it and built by helper processes side
   by side (``parallel.py``), one checkpoint per partition.
3. Switch: lock the live checkpoint rows (the live workers wait), apply the last few
   events of every shadow partition, hand the checkpoints and dead letters over, point
   every stable name at the new tables, drop (or keep) the old ones, commit: once, for
   every partition. The live workers see the new generation at their next batch and
   carry on from the handed-over checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from aura_es import identifiers
from aura_es.catalog.model import ProjectionSpec
from aura_es.projection import dlq
from aura_es.projection.engine import serving
from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.loading import fingerprint
from aura_es.projection.engine.middleware import Middleware
from aura_es.projection.engine.runner import LostOwnership, Step
from aura_es.projection.middleware.logging import LogLines
from aura_es.projection.middleware.tracing import Tracing
from aura_es.projection.state import checkpoints, registry
from aura_es.replay import claim, generations, parallel
from aura_es.store import eventlog

#: Rebuild batches are larger than live ones: throughput matters, latency does not.
MIN_REBUILD_BATCH = 5000
#: The switch waits until the shadow is this close to the head, so the live worker is
#: held for one short batch at most.
SWITCH_WITHIN_EVENTS = 2000


@dataclass(frozen=True)
class RebuildProgress:
    done: int
    total: int
    position: int
    head: int


@dataclass(frozen=True)
class RebuildResult:
    projection: str
    generation: int
    resumed_from: int
    events: int
    seconds: float
    switched_at_position: int
    open_dead_letters: int
    views: list[str]
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "projection": self.projection, "generation": self.generation,
            "resumed_from": self.resumed_from, "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
            "switched_at_position": self.switched_at_position,
            "open_dead_letters": self.open_dead_letters,
            "views": self.views, "dropped": self.dropped, "kept": self.kept,
        }


class Rebuild:
    """One rebuild of one projection on one connection (which holds the replay claim)."""

    def __init__(
        self, conn: psycopg.Connection[Any], spec: ProjectionSpec, *,
        keep_old: bool = False, batch_size: int | None = None, log: Any = None,
        processes: int = 1, database_url: str | None = None,
    ) -> None:
        self.conn = conn
        self.spec = spec
        self.keep_old = keep_old
        self.log = log
        #: Helper processes that catch the shadow's partitions up (a partitioned
        #: projection only; they need ``database_url`` to connect).
        self.processes = processes if database_url is not None else 1
        self.database_url = database_url
        self.fingerprint = fingerprint(spec)
        claim.claim(conn, spec.name, "rebuild")
        with conn.transaction(), conn.cursor() as cur:
            unfinished = generations.building(cur, spec)
            if unfinished and unfinished[2] != self.fingerprint:
                self._abandon(cur, unfinished[0], unfinished[1])
                unfinished = None
            if unfinished:
                self.generation, storage = unfinished[0], unfinished[1]
            else:
                self.generation = generations.next_generation(cur, spec)
                storage = generations.physical_storage(spec, self.generation)
                generations.start(cur, spec, self.generation, storage, self.fingerprint)
        self.shadow = generations.shadow_checkpoint(spec, self.generation)
        self.storage = storage
        self.batch_size = batch_size or max(spec.batch_size, MIN_REBUILD_BATCH)
        middleware: list[Middleware] = [Tracing("aura.replay.batch",
                                                generation=self.generation)]
        if log is not None:
            middleware.append(LogLines(log))
        self.middleware = middleware
        self.partitions = self._shadow_partitions()
        self._attach()
        self.resumed_from = self._position()

    def _attach(self) -> None:
        """An engine per shadow partition, from where its checkpoint is now. A transient
        failure is retried on this connection as the catalog says; a lost connection or
        a takeover ends the run (running again resumes)."""
        self.engines = [Engine(
            self.conn, self.spec, storage=self.storage, checkpoint_name=self.shadow,
            fingerprint=self.fingerprint, replaying=True, generation=self.generation,
            batch_size=self.batch_size, middleware=self.middleware, log=self.log,
            max_transient_failures=self.spec.error_handling.max_retries,
            partition=partition, partitions=self.partitions,
        ) for partition in range(self.partitions)]
        self.engine = self.engines[0]
        self.runner = self.engine.runner

    def _shadow_partitions(self) -> int:
        """The shadow is split like the projection when helpers will build it in
        parallel; a rebuild that resumes keeps the shadow's split as it is."""
        with self.conn.cursor() as cur:
            found = checkpoints.get(cur, self.shadow)
        if found is not None:
            return found.partitions
        return self.spec.partitions if self.processes > 1 else 1

    # -- the loop ---------------------------------------------------------------------------

    def run(self, on_progress: Callable[[RebuildProgress], None] | None = None) -> RebuildResult:
        """Catches up (the shadow's partitions in helper processes first, when it is
        split), then switches; returns what was done. Raises on a handler failure the
        DLQ cannot take (``dead_letter_queue: false``) or a lost connection: running
        again resumes from the rebuild's checkpoints."""
        started = time.perf_counter()
        done = self._applied()
        counted_to, total = self._count(done)
        if self.partitions > 1 and self.processes > 1:
            parallel.catch_up(self, lambda: self._report(on_progress, total))
            self._attach()  # from where the helpers left each partition
            done = self._applied()
        snapshots_cleared = False
        turn = 0
        while True:
            engine = self.engines[turn % len(self.engines)]
            turn += 1
            step = engine.advance_or_raise().step
            if step is None:
                continue
            done += step.applied
            head = eventlog.head(self.conn)
            if head > counted_to:  # events stored since: more to do
                total += eventlog.pending(self.conn, self.spec.source_events, eventlog.ORIGIN,
                                          cap=None, above=counted_to)
                counted_to = head
            if on_progress is not None:
                on_progress(RebuildProgress(done, max(total, done), self._position(), head))
            if turn % len(self.engines):
                continue  # every partition steps once before the shadow is measured
            if self._remaining() <= SWITCH_WITHIN_EVENTS:
                if not snapshots_cleared:
                    # Wait out older snapshots first, then catch up again (see below).
                    self._wait_for_older_snapshots()
                    snapshots_cleared = True
                    continue
                result = self._try_switch(started)
                if result is not None:
                    if on_progress is not None:
                        final = result.switched_at_position
                        on_progress(RebuildProgress(result.events, result.events, final, final))
                    return result

    def _report(self, on_progress: Callable[[RebuildProgress], None] | None,
                total: int) -> None:
        if on_progress is not None:  # read from the checkpoints: the helpers move them
            with self.conn.cursor() as cur:
                rows = checkpoints.rows_of(cur, self.shadow)
            done = sum(row.events_applied for row in rows)
            position = min((row.position for row in rows), default=0)
            on_progress(RebuildProgress(done, max(total, done), position,
                                        eventlog.head(self.conn)))

    def _position(self) -> int:
        return min(e.runner.position for e in self.engines)

    def _remaining(self) -> int:
        """Events of the projection's topics the shadow has still to read (each
        partition from its own cursor), counted up to just past the switch's bound."""
        remaining = 0
        for engine in self.engines:
            runner = engine.runner
            remaining += eventlog.pending(
                self.conn, self.spec.source_events, runner.cursor,
                cap=SWITCH_WITHIN_EVENTS + 1, partition=runner.partition)
            if remaining > SWITCH_WITHIN_EVENTS:
                break
        return remaining

    # -- the switch -------------------------------------------------------------------------

    def _wait_for_older_snapshots(self) -> None:
        """Waits until no transaction of this database holds a snapshot older than now.

        PostgreSQL resolves names with the latest catalog, but reads rows with the
        transaction's snapshot. A REPEATABLE READ transaction that began while the new
        tables were half built, and first reads the stable name after the switch, would
        read them as they were then. Like CREATE INDEX CONCURRENTLY, wait those out: any
        later snapshot sees the new generation complete up to (at least) this point.
        """
        row = self.conn.execute(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::xid,"
            " current_setting('is_superuser') = 'on'"
            " OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')"
        ).fetchone()
        assert row is not None
        horizon, sees_everyone = row
        if not sees_everyone:
            # Other roles' snapshots are hidden from us: only our own role's are waited for.
            self._log("warning", "the switch can wait only for transactions of its own role;"
                      " grant pg_read_all_stats to wait for every reader")
        announced = time.monotonic()
        while True:
            blocking = self.conn.execute(
                "SELECT pid, xact_start FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL"
                " AND age(backend_xmin) > age(%s::xid) ORDER BY xact_start LIMIT 1",
                (horizon,),
            ).fetchone()
            if blocking is None:
                return
            if time.monotonic() - announced > 10:
                announced = time.monotonic()
                self._log("warning", "switch waits for an older transaction to end",
                          pid=blocking[0], transaction_started=str(blocking[1]))
            time.sleep(0.05)

    def _try_switch(self, started: float) -> RebuildResult | None:
        before = [(e.runner.cursor, e.runner.position) for e in self.engines]
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                live = serving.current(cur, self.spec, lock=True)
                for engine in self.engines:
                    step: Step = engine.runner.step()
                    while not step.caught_up:
                        step = engine.runner.step()
                return self._switch(cur, live, started)
        except LostOwnership:
            raise
        except Exception as e:
            # The tail failed inside the switch: everything rolled back. Go back to the
            # catch-up loop, whose poison handling deals with the event.
            for engine, (cursor, position) in zip(self.engines, before, strict=True):
                engine.runner.cursor, engine.runner.position = cursor, position
            if self.engine.failures.is_transient(e) or self.conn.broken:
                raise
            self._log("warning", "switch postponed: the last events failed",
                      error=f"{type(e).__name__}: {e}")
            return None

    def _switch(
        self, cur: psycopg.Cursor[Any], live: serving.Live, started: float
    ) -> RebuildResult:
        shadows = checkpoints.rows_of(cur, self.shadow)
        assert shadows
        position = min(s.position for s in shadows)
        applied = sum(s.events_applied for s in shadows)
        checkpoints.take_over(cur, self.spec.name, shadows, self.spec.partitions)
        open_letters = dlq.hand_over(
            cur, self.spec.name, generations.shadow_checkpoint(self.spec, live.generation),
            self.shadow,
        )
        views, dropped, kept = self._move_names(cur, live)
        seconds = time.perf_counter() - started
        generations.finish(cur, self.spec, self.generation, events=applied, seconds=seconds,
                           switched_at=position)
        eventlog.notify(cur)  # wakes the live worker now rather than at its next poll
        self._log("info", "switched", generation=self.generation, position=position,
                  views=views, dropped=dropped, kept=kept)
        return RebuildResult(
            projection=self.spec.name, generation=self.generation,
            resumed_from=self.resumed_from, events=applied, seconds=seconds,
            switched_at_position=position, open_dead_letters=open_letters,
            views=views, dropped=dropped, kept=kept,
        )

    def _move_names(
        self, cur: psycopg.Cursor[Any], live: serving.Live
    ) -> tuple[list[str], list[str], list[str]]:
        """Every stable name becomes a view of the new generation's table; the replaced
        generation's tables (exactly those recorded for it) are dropped or kept."""
        stable_names = self.runner.projection.stable_tables()
        new_tables = self.runner.projection.tables()
        old = generations.generation_tables(cur, self.spec, live.generation, live.storage)
        for name in dict.fromkeys([*(t.stable_name for t in old), *stable_names]):
            if generations.relation_kind(cur, name) == "view":
                cur.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(name)))
        dropped, kept = [], []
        for table in old:
            if not self.keep_old:
                cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table.name)))
                registry.forget(cur, [table.name])
                dropped.append(table.name)
            elif live.generation == 1:
                # Generation 1 lives under the stable names themselves: move it aside.
                aside = kept_aside_name(table.name, self.spec.storage)
                cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(table.name), sql.Identifier(aside)))
                registry.rename(cur, table.name, aside)
                kept.append(aside)
            else:
                kept.append(table.name)
        for name, table_name in zip(stable_names, new_tables, strict=True):
            cur.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
                sql.Identifier(name), sql.Identifier(table_name)))
        return stable_names, dropped, kept

    # -- bookkeeping ------------------------------------------------------------------------

    def _abandon(self, cur: psycopg.Cursor[Any], generation: int, storage: str) -> None:
        """An unfinished rebuild of another definition: its tables are of no use."""
        abandoned = generations.generation_tables(cur, self.spec, generation, storage)
        for table in abandoned:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table.name)))
        registry.forget(cur, [t.name for t in abandoned])
        shadow = generations.shadow_checkpoint(self.spec, generation)
        checkpoints.delete(cur, shadow)
        dlq.forget(cur, shadow)
        generations.abandon(cur, self.spec, generation)
        self._log("warning", "abandoned an unfinished rebuild of another definition",
                  generation=generation)

    def _applied(self) -> int:
        with self.conn.cursor() as cur:
            return sum(row.events_applied for row in checkpoints.rows_of(cur, self.shadow))

    def _count(self, done: int) -> tuple[int, int]:
        upto = eventlog.head(self.conn)
        return upto, done + sum(
            eventlog.pending(self.conn, self.spec.source_events, e.runner.cursor, upto=upto,
                             partition=e.runner.partition) for e in self.engines)

    def close(self) -> None:
        claim.release(self.conn, self.spec.name)

    def _log(self, level: str, message: str, **fields: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(message, projection=self.spec.name, **fields)


def kept_aside_name(table: str, storage: str) -> str:
    """Where ``--keep-old`` moves a generation-1 table: ``<storage>__g1[__<suffix>]``."""
    return identifiers.check_length(f"{storage}{identifiers.SEPARATOR}g1{table[len(storage):]}")


def old_generation_tables(
    cur: psycopg.Cursor[Any], spec: ProjectionSpec, live: serving.Live
) -> list[str]:
    """The tables of the generation serving now, exactly as recorded."""
    return [t.name for t in generations.generation_tables(cur, spec, live.generation,
                                                           live.storage)]
