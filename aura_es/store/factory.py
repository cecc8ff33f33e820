"""The library's Postgres infrastructure factory, wired to our recorder and one events table."""

from __future__ import annotations

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.postgres import PostgresFactory

from aura_es.store.recorder import EVENTS_TABLE, AuraRecorder


class AuraFactory(PostgresFactory):
    application_recorder_class = AuraRecorder

    def application_recorder(self) -> ApplicationRecorder:
        # One events table per database whatever the application class is called,
        # so projections and the mirror read a single, totally ordered log.
        recorder = AuraRecorder(self.datastore, events_table_name=EVENTS_TABLE)
        if self.env_create_table():
            recorder.create_table()
        return recorder
