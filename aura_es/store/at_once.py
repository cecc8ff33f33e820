"""A batch of keyed commands saved in one round trip, the server at work while the
client decides.

A batch (``execute_many``) looked its keys up first, a round trip during which the
client idled, then decided its commands while the server idled, then saved. Here one
pipeline does it all (``pipelined.StepwiseAppend``): the batch's keys are looked up
first, answered while the first commands are decided; when none is stored,
the key rows of the commands decided so far are inserted while the next are decided,
in a transaction, and the events follow in chunks. A key stored (a batch sent again)
stops the deciding as soon as the answer is read, with no transaction begun, and the
batch is run the careful way, duplicates answered from the keys the answer holds. A key
a concurrent batch stores after the question collides in the insert, which the client
sees between decisions (``refused``): the transaction rolls back, nothing written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent

from aura_es.store import idempotency
from aura_es.store.chunked import ChunkStatements
from aura_es.store.idempotency import IdempotencyRecord
from aura_es.store.pipelined import Meanwhile, OutOfStep, StepwiseAppend
from aura_es.store.prepared import PreparedAppend


class AppendAtOnce:
    """One batch's question and transaction (``AuraRecorder.appending_at_once``); the
    question is sent when it is made."""

    def __init__(self, stepwise: StepwiseAppend, chunked: ChunkStatements,
                 keys: PreparedAppend, look_up: PreparedAppend,
                 key_hashes: Sequence[str]) -> None:
        self._stepwise = stepwise
        self._chunked = chunked
        self._keys = keys
        #: Whether the batch's events were appended and committed.
        self.appended = False
        self._stored: dict[str, Any] | None = None
        stepwise.ask(look_up, (list(key_hashes),))

    def none_stored(self, *, wait: bool) -> bool | None:
        """Whether none of the batch's keys is stored; None while the answer has not
        come (``wait=False``). A question the server could not answer is a key stored:
        the careful way finds out."""
        answer = self._stepwise.answer(wait=wait)
        if answer is None:
            return None if not wait and not self._stepwise.refused() else False
        if answer.ntuples and self._stored is None:
            # Read while the connection is this batch's.
            self._stored = idempotency.stored_in(self._stepwise.connection, answer)
        return not answer.ntuples

    def stored(self) -> dict[str, Any] | None:
        """The batch's keys found stored, as ``idempotency.stored_in`` reads them, once
        ``none_stored`` has said some are (None before, or when the server could not
        answer): a batch sent again answers its duplicates from them, without a lookup
        of its own (a round trip, 0.4 ms of a 100-command batch's)."""
        return self._stored

    def refused(self) -> bool:
        """Whether the server has refused the question or key rows sent so far (a key a
        concurrent batch stored): asked between decisions, it does not wait."""
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
        nothing appended, when a key is stored, the server refused key rows sent before,
        or it did not hold a statement this process thought it held (the careful way
        prepares it again); a refusal answered with this append is raised."""
        if not self.none_stored(wait=True) or self.refused():
            return None
        try:
            positions = self._stepwise.append(
                self._chunked.chunks(stored_events, records), meanwhile)
        except OutOfStep:
            return None
        self.appended = True
        return positions
