"""The drift hook: warns when the read model the worker attaches to was built by another
definition of the projection (a replay, or `--rebuild-on-drift`, rebuilds it)."""

from __future__ import annotations

from aura_es.projection import checkpoints
from aura_es.projection.runner import BatchRunner
from workers.hooks import Hook, WorkerView


class DriftWarning(Hook):
    def on_attached(self, worker: WorkerView, runner: BatchRunner) -> None:
        with runner.conn.cursor() as cur:
            checkpoint = checkpoints.get(cur, worker.spec.name)
        built_by = checkpoint.fingerprint if checkpoint else None
        if built_by is not None and built_by != runner.fingerprint:
            worker.log.warning(
                "drift: the read model was built by another definition; rebuild it with"
                " `aura-es replay` or run workers with --rebuild-on-drift",
                built_by=built_by, definition=runner.fingerprint,
            )
