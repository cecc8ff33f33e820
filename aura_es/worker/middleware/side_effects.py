"""Side effects: runs what committed batches recorded with ``tx.side_effect``, after each
such batch and while idle, and counts and logs every outcome."""

from __future__ import annotations

import time

from aura_es.db import first_line
from aura_es.observability import metrics
from aura_es.projection.engine.dispatch import DEAD, Dispatcher
from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.middleware import Middleware
from aura_es.projection.engine.runner import Step
from aura_es.worker.middleware import WorkerView

#: While idle, due side effects (retries whose time has come) are looked for this often.
IDLE_CHECK_SECONDS = 1.0


class SideEffects(Middleware):
    def __init__(self, worker: WorkerView, count: bool) -> None:
        self.count = count
        self.worker = worker
        self.dispatcher = Dispatcher(worker.spec.name, worker.spec.error_handling,
                                     on_outcome=self._outcome)
        self._checked = 0.0

    def after_step(self, engine: Engine, step: Step) -> None:
        if step.side_effects:
            self._run()

    def on_idle(self) -> None:
        if time.monotonic() - self._checked >= IDLE_CHECK_SECONDS:
            self._run()

    def _run(self) -> None:
        conn = self.worker.connection
        if conn is None or conn.broken or not self.worker.dispatches_side_effects:
            return
        self._checked = time.monotonic()
        self.dispatcher.run_due(conn)

    def _outcome(self, action: str, outcome: str, error: BaseException | None) -> None:
        if self.count:
            metrics.SIDE_EFFECTS.labels(self.worker.spec.name, action, outcome).inc()
        if error is not None:
            level = "error" if outcome == DEAD else "warning"
            getattr(self.worker.log, level)(
                "side effect failed" + ("; dead after its last retry" if outcome == DEAD
                                        else "; retried later"),
                action=action, error=f"{type(error).__name__}: {first_line(error)}")
