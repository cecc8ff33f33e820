"""The log-lines hook: what a worker says about its role, its failures and its breaker.
(Poison isolation logs its own steps, with the event's identity.)"""

from __future__ import annotations

from aura_es.db import first_line
from aura_es.projection.failures import BreakerState
from aura_es.projection.runner import BatchRunner
from workers.hooks import Hook, WorkerView


class LogLines(Hook):
    def on_role(self, worker: WorkerView) -> None:
        if worker.role == "standby":
            worker.log.info("standing by for the projection lock")

    def on_attached(self, worker: WorkerView, runner: BatchRunner) -> None:
        worker.log.info("active", position=runner.position, generation=runner.generation,
                        storage=runner.projection.storage)

    def on_transient_failure(
        self, worker: WorkerView, error: BaseException, retry_in: float,
    ) -> None:
        worker.log.warning(
            "transient failure", error=f"{type(error).__name__}: {first_line(error)}",
            breaker=str(worker.breaker.state), consecutive=worker.breaker.failures,
            retry_in_seconds=round(retry_in, 3),
        )

    def on_breaker_change(
        self, worker: WorkerView, before: BreakerState, after: BreakerState,
    ) -> None:
        level = "error" if after == BreakerState.OPEN else "info"
        getattr(worker.log, level)("circuit breaker", before=str(before), after=str(after),
                                   recovery_timeout=worker.breaker.recovery_timeout)
