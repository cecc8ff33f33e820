"""The library's Postgres infrastructure factory, wired to our recorder and one events table."""

from __future__ import annotations

import math
import os
from typing import Any

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.postgres import PostgresFactory

from aura_es.errors import ConfigurationError
from aura_es.store import wakeup
from aura_es.store.names import EVENTS_TABLE
from aura_es.store.recorder import AuraRecorder
from aura_es.switches import yes_no

#: Positions commit in order (the table lock), for the library's own position readers.
SERIAL_APPENDS = "AURA_ES_SERIAL_APPENDS"
#: The least time between two wake-ups (NOTIFY) from one process, in milliseconds.
#: Readers follow a busy log for 2.5 of these (``store/following.py``), so it costs
#: them no time; lower sends more NOTIFYs, each a transaction on the server.
WAKE_INTERVAL_MS = "AURA_ES_WAKE_INTERVAL_MS"
MAX_WAKE_INTERVAL_MS = 1000.0


class AuraFactory(PostgresFactory):
    application_recorder_class = AuraRecorder
    _recorders: list[AuraRecorder]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorders = []

    def close(self) -> None:
        for recorder in self._recorders:
            recorder.close()
        super().close()

    def application_recorder(self) -> ApplicationRecorder:
        # One events table per database whatever the application class is called,
        # so projections and the mirror read a single, totally ordered log.
        recorder = AuraRecorder(
            self.datastore, events_table_name=EVENTS_TABLE, serial=self._serial_appends(),
            wake_interval=self._wake_interval())
        self._recorders.append(recorder)
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def _serial_appends(self) -> bool:
        return yes_no(SERIAL_APPENDS, self.env.get(SERIAL_APPENDS) or "", default=False)

    def _wake_interval(self) -> float:
        return wake_interval(self.env.get(WAKE_INTERVAL_MS) or "")


def wake_interval_from_env() -> float:
    """The wake interval this process's writers use (readers follow for 2.5 of them)."""
    return wake_interval(os.environ.get(WAKE_INTERVAL_MS, ""))


def wake_interval(value: str) -> float:
    """Seconds between wake-ups, from ``AURA_ES_WAKE_INTERVAL_MS`` (empty: the default)."""
    if not value:
        return wakeup.MIN_INTERVAL_SECONDS
    try:
        milliseconds = float(value)
    except ValueError:
        milliseconds = math.nan
    if not 0 <= milliseconds <= MAX_WAKE_INTERVAL_MS:  # also refuses NaN
        raise ConfigurationError(
            f"{WAKE_INTERVAL_MS}={value!r} is not a number of milliseconds from 0 to"
            f" {MAX_WAKE_INTERVAL_MS:g}")
    return milliseconds / 1000
