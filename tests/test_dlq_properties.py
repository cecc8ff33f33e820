"""G5 and G6 as a state machine: appends with repeated keys, worker steps, crashes, poison
events, transient failures (breaker trips), fixes and DLQ retries, interleaved at random.

After every step: the read model equals the fold of the log up to the checkpoint, minus
exactly the dead-lettered events and the events parked behind them; every parked event
belongs to its dead letter's aggregate and comes after it; a transient failure moves
nothing and dead-letters nothing.
"""

from __future__ import annotations

import itertools
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from aura_es import AuraApp, DomainError
from aura_es.db import connect
from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.failures import CircuitBreaker, FailurePolicy
from tests.support import folds
from tests.support.poison import POISONED_SPEC as SPEC
from tests.support.poison import PoisonedDebates

_runs = itertools.count()


class DeadLetterMachine(RuleBasedStateMachine):
    db_url: str = ""

    @initialize()
    def setup(self) -> None:
        self.app = AuraApp(self.db_url)
        self.conn = connect(self.db_url)
        self.conn.execute("TRUNCATE aura_events, aura_idempotency, aura_dead_letter_parked,"
                          " aura_dead_letters, aura_projection_checkpoints RESTART IDENTITY")
        self.conn.execute("DROP TABLE IF EXISTS poisoned")
        PoisonedDebates.fixed_up_to = 0
        PoisonedDebates.fail_next_transiently = 0
        self.debates: list[UUID] = []
        self.keys = itertools.count()
        self.breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=0.0)
        self._new_runner()

    def _new_runner(self) -> None:
        self.runner = Engine(self.conn, SPEC,
                             failures=FailurePolicy(SPEC.error_handling, self.breaker))

    def teardown(self) -> None:
        self.app.close()
        self.conn.close()

    # -- writes -------------------------------------------------------------------------

    @rule(repeat=st.booleans())
    def start_debate(self, repeat: bool) -> None:
        key = f"start-{len(self.debates) - 1 if repeat and self.debates else next(self.keys)}"
        debate_id = self.app.start_debate("topic", ["a", "b"], idempotency_key=key)
        if debate_id not in self.debates:
            self.debates.append(debate_id)

    @rule(which=st.integers(0, 5), poison=st.booleans(), round_no=st.integers(1, 3))
    def argue(self, which: int, poison: bool, round_no: int) -> None:
        if not self.debates:
            return
        debate_id = self.debates[-1 - which % len(self.debates)]
        text = "POISON" if poison else "fine"
        key = f"argue-{next(self.keys)}"
        try:
            for _ in range(2):  # the retry of a command is absorbed
                self.app.add_argument(debate_id, "a", "for", text, round=round_no,
                                      idempotency_key=key)
        except DomainError:
            pass  # the debate has ended

    @rule(consensus=st.booleans())
    def poisoned_lifecycle(self, consensus: bool) -> None:
        """A whole debate whose first argument is poison: everything after it must park."""
        self.start_debate(repeat=False)
        self.argue(0, poison=True, round_no=1)
        self.argue(0, poison=False, round_no=2)
        self.end(0, consensus)

    @rule(which=st.integers(0, 5), consensus=st.booleans())
    def end(self, which: int, consensus: bool) -> None:
        if not self.debates:
            return
        debate_id = self.debates[-1 - which % len(self.debates)]
        try:
            if consensus:
                self.app.reach_consensus(debate_id, "adopt", idempotency_key=f"end-{debate_id}")
            else:
                self.app.fail_debate(debate_id, "timeout", idempotency_key=f"end-{debate_id}")
        except DomainError:
            pass

    # -- the worker ---------------------------------------------------------------------

    @rule(steps=st.integers(1, 20))
    def work(self, steps: int) -> None:
        for _ in range(steps):
            if not self.breaker.allow():
                return
            before = (self.runner.runner.position, self._open_letters())
            progress = self.runner.advance()
            if progress.failure is not None:
                # G6: a transient failure moves no checkpoint and dead-letters nothing.
                assert self.runner.failures.is_transient(progress.failure)
                assert (self.runner.runner.position, self._open_letters()) == before
                continue

    @rule(steps=st.integers(1, 20))
    def work_more(self, steps: int) -> None:
        self.work(steps)  # a second rule for the same thing: the worker runs more often

    @rule(times=st.integers(1, 3))
    def transient_failure(self, times: int) -> None:
        PoisonedDebates.fail_next_transiently = times
        self.work(times)
        PoisonedDebates.fail_next_transiently = 0

    @rule()
    def crash(self) -> None:
        self._new_runner()

    @rule()
    def fix_and_retry_everything(self) -> None:
        PoisonedDebates.fixed_up_to = self.app.head_position()
        for letter in self._open_letters():
            assert self.runner.runner.retry_dead_letter(letter)
        assert self._open_letters() == []

    # -- invariants ---------------------------------------------------------------------

    def _open_letters(self) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM aura_dead_letters WHERE status = 'parked' ORDER BY id")]

    @invariant()
    def read_model_is_the_fold_minus_exactly_the_dead_letters(self) -> None:
        if not hasattr(self, "runner"):
            return
        checkpoint = self.runner.runner.position
        letters = self.conn.execute(
            "SELECT id, position, aggregate_id FROM aura_dead_letters WHERE status = 'parked'"
        ).fetchall()
        parked = self.conn.execute(
            "SELECT p.position, d.id FROM aura_dead_letter_parked p"
            " JOIN aura_dead_letters d ON d.id = p.dead_letter_id WHERE d.status = 'parked'"
        ).fetchall()
        log = {e["position"]: e for e in folds.events(self.conn, checkpoint)}
        excluded: set[int] = set()
        for letter_id, position, aggregate_id in letters:
            event = log[position]
            # A dead letter holds a real poison event the handler still fails on...
            assert "POISON" in event["data"].get("text", "")
            assert position > PoisonedDebates.fixed_up_to
            # ...and exactly the later events of its aggregate up to the checkpoint.
            behind = sorted(p for p, e in log.items() if e["id"] == aggregate_id and p > position)
            assert sorted(p for p, d in parked if d == letter_id) == behind
            excluded |= {position, *behind}
        # Every unfixed poison event up to the checkpoint is dead-lettered or parked.
        for p, e in log.items():
            if "POISON" in e["data"].get("text", "") and p > PoisonedDebates.fixed_up_to:
                assert p in excluded
        with self.conn.transaction():
            stored = folds.stored_debate_state(self.conn, "poisoned")
        assert stored == folds.debate_state(self.conn, checkpoint, frozenset(excluded))


@pytest.mark.slow
def test_dead_letters_parking_and_breaker_as_a_state_machine(db_url: str) -> None:
    DeadLetterMachine.db_url = db_url
    DeadLetterMachine.TestCase.settings = settings(
        max_examples=40, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    DeadLetterMachine.TestCase().runTest()


def test_other_aggregates_keep_flowing_past_a_poison_event(app: AuraApp) -> None:
    poisoned = app.start_debate("p", ["a"], idempotency_key="p")
    healthy = app.start_debate("h", ["a"], idempotency_key="h")
    app.add_argument(poisoned, "a", "for", "POISON", round=1, idempotency_key="p1")
    app.add_argument(healthy, "a", "for", "fine", round=1, idempotency_key="h1")
    app.add_argument(poisoned, "a", "for", "fine", round=2, idempotency_key="p2")
    app.reach_consensus(healthy, "yes", idempotency_key="h2")
    PoisonedDebates.fixed_up_to = 0
    with connect(app.database_url) as conn:
        engine = Engine(conn, SPEC)
        while engine.runner.position < app.head_position():
            engine.advance()
        rows = dict(conn.execute("SELECT debate_id, arguments FROM poisoned").fetchall())
        assert rows == {poisoned: 0, healthy: 1}
        letter = conn.execute(
            "SELECT id, position, attempts, error_type FROM aura_dead_letters").fetchone()
        assert letter is not None and letter[1] == 3 and letter[2] == 2
        assert letter[3].endswith("PoisonError")
        parked = [r[0] for r in conn.execute("SELECT position FROM aura_dead_letter_parked")]
        assert parked == [5]
        PoisonedDebates.fixed_up_to = app.head_position()
        assert engine.retry_dead_letter(letter[0])
        rows = dict(conn.execute("SELECT debate_id, arguments FROM poisoned").fetchall())
        assert rows == {poisoned: 2, healthy: 1}
        assert folds.stored_debate_state(conn, "poisoned") == folds.debate_state(conn)


