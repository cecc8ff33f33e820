"""A batch of keyed commands saved in one round trip, the server at work while the
client decides.

A batch (``execute_many``) looked its keys up first, a round trip during which the
client idled, then decided its commands while the server idled, then saved. Here one
pipelined transaction does it all (``pipelined.StepwiseAppend``): the key rows of the
commands decided so far are inserted while the next are decided, and the events follow
in chunks. A key already stored (a batch sent again) makes its insert fail, which the
client sees between decisions (``refused``): it stops, the transaction rolls back with
nothing written, and the batch is run the careful way (its keys looked up first,
duplicates answered from them). A key a concurrent batch stores collides the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventsourcing.persistence import StoredEvent

from aura_es.store import idempotency
from aura_es.store.chunked import ChunkStatements
from aura_es.store.idempotency import IdempotencyRecord
from aura_es.store.pipelined import Meanwhile, OutOfStep, StepwiseAppend
from aura_es.store.prepared import PreparedAppend


class AppendAtOnce:
    """One batch's transaction (``AuraRecorder.appending_at_once``)."""

    def __init__(self, stepwise: StepwiseAppend, chunked: ChunkStatements,
                 keys: PreparedAppend) -> None:
        self._stepwise = stepwise
        self._chunked = chunked
        self._keys = keys
        #: Whether the batch's events were appended and committed.
        self.appended = False

    def refused(self) -> bool:
        """Whether the server has refused key rows sent so far (a key stored): asked
        between decisions, it does not wait for answers still to come."""
        return self._stepwise.refused()

    def insert_keys(self, records: tuple[IdempotencyRecord, ...]) -> None:
        """Key rows of commands decided so far, inserted while the rest are decided:
        the server's share of a batch, half of it the key rows, was otherwise waited
        for at the end (issue 27)."""
        self._stepwise.send(self._keys, idempotency.insert_params(records))

    def append(self, stored_events: Sequence[StoredEvent],
               records: tuple[IdempotencyRecord, ...],
               meanwhile: Meanwhile | None = None) -> list[int] | None:
        """The events and the key rows not inserted yet, appended and committed: their
        positions (given to ``meanwhile`` while the commit is on the server). None,
        nothing appended, when the server refused key rows sent before or did not hold
        a statement this process thought it held (the careful way prepares it again); a
        refusal answered with this append is raised."""
        if self.refused():
            return None
        try:
            positions = self._stepwise.append(
                self._chunked.chunks(stored_events, records), meanwhile)
        except OutOfStep:
            return None
        self.appended = True
        return positions
