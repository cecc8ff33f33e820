"""A partitioned rebuild's catch-up in parallel: helper processes build the shadow's
partitions side by side, then the rebuild itself applies the last events of each and
switches once (``rebuild.py``).

Each helper gets every K-th partition, steps each until it has read everything below the
horizon, and exits. Helpers hold no claim and no lease: the rebuild holds the
projection's replay claim throughout, and each shadow partition's checkpoint row is
locked by every batch, so a helper and the rebuild never apply one batch twice. A helper
that fails (a handler the DLQ cannot take, a lost connection) ends the run; running the
replay again resumes every partition from its checkpoint.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.errors import AuraError
from aura_es.projection.engine.engine import Engine

if TYPE_CHECKING:
    from aura_es.replay.rebuild import Rebuild

#: How often the progress bar is redrawn while the helpers work.
REPORT_SECONDS = 0.25


@dataclass(frozen=True)
class Share:
    """What one helper builds: picklable, for a process of its own."""

    database_url: str
    spec_json: str
    shadow: str
    generation: int
    storage: str
    fingerprint: str
    batch_size: int
    partitions: int
    mine: tuple[int, ...]


def catch_up(rebuild: Rebuild, report: Callable[[], None]) -> None:
    """Runs ``rebuild.processes`` helpers over the shadow's partitions; returns when all
    have caught up, reporting progress meanwhile."""
    assert rebuild.database_url is not None
    helpers = min(rebuild.processes, rebuild.partitions)
    context = multiprocessing.get_context("spawn")  # no inherited connections or threads
    running = [context.Process(target=build, args=(Share(
        rebuild.database_url, rebuild.spec.model_dump_json(), rebuild.shadow,
        rebuild.generation, rebuild.storage, rebuild.fingerprint, rebuild.batch_size,
        rebuild.partitions, tuple(range(i, rebuild.partitions, helpers))),),
        name=f"aura-rebuild-{rebuild.spec.name}-{i}", daemon=True) for i in range(helpers)]
    for process in running:
        process.start()
    try:
        while any(p.is_alive() for p in running):
            report()
            time.sleep(REPORT_SECONDS)
        failed = [p.exitcode for p in running if p.exitcode != 0]
        if failed:
            raise AuraError(
                f"rebuild of {rebuild.spec.name!r}: {len(failed)} of {helpers} partition"
                f" builders failed (exit {failed[0]}); run the same command again to resume")
    finally:
        for process in running:
            if process.is_alive():
                process.terminate()
            process.join()


def build(share: Share) -> None:
    """A helper's life: its partitions of the shadow, each up to the horizon."""
    spec = ProjectionSpec.model_validate_json(share.spec_json)
    with connect(share.database_url) as conn:
        pending = _engines(conn, spec, share)
        while pending:
            for engine in list(pending):
                progress = engine.advance_or_raise()
                if progress.step is not None and progress.step.caught_up:
                    pending.remove(engine)


def _engines(conn: psycopg.Connection[Any], spec: ProjectionSpec, share: Share) -> list[Engine]:
    return [Engine(
        conn, spec, storage=share.storage, checkpoint_name=share.shadow,
        fingerprint=share.fingerprint, replaying=True, generation=share.generation,
        batch_size=share.batch_size, max_transient_failures=spec.error_handling.max_retries,
        partition=partition, partitions=share.partitions,
    ) for partition in share.mine]

