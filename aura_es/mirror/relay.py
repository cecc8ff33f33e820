"""`aura-es mirror run`: relays every stored event, in global order, onto the stream.

The resume point is the stream's own tail (its last message's ``Aura-Position``), never
local state: a relay killed anywhere, or a batch whose outcome is unknown, resumes from
what the stream really holds. One active relay across hosts (advisory lock); others
stand by. The store is read in batches of at most ``batch_size`` and each batch is
confirmed before the next is read, so memory is bounded and a slow broker slows the
relay instead of filling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import psycopg
from nats.aio.client import Client
from nats.js import JetStreamContext

from aura_es import broker, locks
from aura_es.db import connect_async
from aura_es.dsn import redact
from aura_es.errors import ConfigurationError
from aura_es.log import get_logger
from aura_es.mirror import divergence, progress, replication, schema_registry
from aura_es.mirror.cloudevents import Message, to_message
from aura_es.mirror.publish import (
    MAX_ATOMIC_BATCH,
    AtomicBatchPublisher,
    PipelinedPublisher,
    Publisher,
)
from aura_es.mirror.stream import StreamSettings, ensure_stream
from aura_es.observability.tracing import span
from aura_es.retry import Backoff, Retrier
from aura_es.store import eventlog, identity
from aura_es.store.eventlog import Cursor
from aura_es.store.factory import wake_interval_from_env
from aura_es.store.following import Follow

#: Waits before reconnecting to an unreachable database or broker.
RECONNECT = Backoff(base=1.0, cap=30.0)
#: Waits before re-reading the stream's tail after an unconfirmed batch.
REPUBLISH = Backoff(base=0.4, cap=10.0)
#: While idle, how often the stream's tail is compared with what the relay confirmed.
TAIL_CHECK_SECONDS = 5.0


def supports_atomic(version: str) -> bool:
    """Atomic batches with Nats-Msg-Id dedup: nats-server 2.12.1 and later."""
    try:
        parts = tuple(int(p) for p in version.split("-")[0].split(".")[:3])
    except ValueError:
        return False
    return parts >= (2, 12, 1)


class Relay:
    def __init__(
        self, database_url: str, nats_url: str, settings: StreamSettings, *,
        batch_size: int = MAX_ATOMIC_BATCH, force_pipelined: bool = False,
        poll_seconds: float = 0.5, schemas: Mapping[str, dict[str, Any]] | None = None,
        standby_guard: bool = True,
    ) -> None:
        self.database_url = database_url
        self.nats_url = nats_url
        self.settings = settings
        self.batch_size = min(batch_size, MAX_ATOMIC_BATCH)
        self.force_pipelined = force_pipelined
        self.poll_seconds = poll_seconds
        # Reads again on its own while the log is busy, so writers may hold NOTIFYs back.
        self.follow = Follow(wake_interval_from_env())
        self.stop = asyncio.Event()
        self.log = get_logger(component="mirror", stream=settings.name)
        self.published = 0
        self.store_id = UUID(int=0)
        self.max_payload = 0
        #: The event schemas to put in the registry bucket, by URI (docs/schemas.md).
        self.schemas = dict(schemas or {})
        #: Publish an event only once every streaming standby has flushed it.
        self.standby_guard = standby_guard
        self._tail_checked = 0.0

    async def run(self) -> None:
        # Unreachable services are said, backed off and tried again for ever; a
        # conflicting stream or bad settings are raised: retrying cannot help.
        retrier = Retrier(RECONNECT, lambda e: not isinstance(e, ConfigurationError))
        while not self.stop.is_set():
            try:
                await self._run_once()
                return
            except Exception as e:
                delay = retrier.failed(e)
                self.log.warning("relay interrupted", error=f"{type(e).__name__}: {e}",
                                 retry_in_seconds=round(delay, 3))
                await self._sleep(delay)

    async def _run_once(self) -> None:
        async with await connect_async(self.database_url) as conn:
            self.store_id = await identity.store_id_async(conn)
            nc = await self._connect_nats()
            if nc is None:
                return
            try:
                # The stream is checked before standing by: a conflicting configuration
                # is an error to report now, not after another relay has died.
                publisher = await self._publisher(nc)
                await self._wait_for_lock(conn)
                if self.stop.is_set():
                    return
                await self._publish_schemas(nc)
                await conn.execute(eventlog.LISTEN)
                await self._relay(conn, nc, publisher)
            finally:
                await nc.drain()

    async def _connect_nats(self) -> Client | None:
        """Connects (reconnecting for ever once connected), or None if stopped meanwhile."""
        connecting = asyncio.ensure_future(broker.connect(
            self.nats_url, error_cb=self._nats_error))
        stopping = asyncio.ensure_future(self.stop.wait())
        done, _ = await asyncio.wait(
            {connecting, stopping}, timeout=15, return_when=asyncio.FIRST_COMPLETED
        )
        stopping.cancel()
        if connecting not in done:
            connecting.cancel()
            if self.stop.is_set():
                return None
            raise ConnectionError(f"no answer from NATS at {redact(self.nats_url)} within 15 s")
        return connecting.result()

    async def _publisher(self, nc: Client) -> Publisher:
        js = nc.jetstream()
        version = nc.connected_server_version
        atomic = not self.force_pipelined and supports_atomic(
            f"{version.major}.{version.minor}.{version.patch}"
        )
        if await ensure_stream(js, self.settings, atomic):
            return AtomicBatchPublisher(nc, self.settings.name)
        return PipelinedPublisher(js, self.settings.name)

    async def _publish_schemas(self, nc: Client) -> None:
        """Before any event that names a schema, the registry on the mesh holds it."""
        if not self.schemas:
            return
        added, conflicts = await schema_registry.publish(nc.jetstream(), self.schemas)
        self.log.info("schemas published", bucket=schema_registry.BUCKET, added=added,
                      registered=len(self.schemas))
        if conflicts:
            self.log.error("schema registry conflict: these keys hold a different schema"
                           " and were left as they are", bucket=schema_registry.BUCKET,
                           keys=conflicts[:5], count=len(conflicts))

    async def _nats_error(self, error: Exception) -> None:
        # One line instead of nats-py's default traceback; reconnects are automatic.
        self.log.warning("nats connection", error=f"{type(error).__name__}: {error}")

    async def _wait_for_lock(self, conn: psycopg.AsyncConnection[Any]) -> None:
        key = f"aura.mirror:{self.settings.name}"
        announced = False
        while not self.stop.is_set():
            if await locks.try_lock_async(conn, key):
                self.log.info("active")
                return
            if not announced:
                self.log.info("standing by: another relay is active")
                announced = True
            await self._sleep(0.5)

    async def _relay(
        self, conn: psycopg.AsyncConnection[Any], nc: Client, publisher: Publisher
    ) -> None:
        js = nc.jetstream()
        self.max_payload = nc.max_payload
        last_seq, cursor = await self._resume(js, conn)
        self.log.info("relaying", publisher=publisher.name, from_position=cursor.position,
                      from_transaction=cursor.transaction,
                      stream_seq=last_seq, store=str(self.store_id))
        unconfirmed = Retrier(REPUBLISH, lambda e: True)
        recorded_at = 0.0
        recorded: tuple[Cursor, int] | None = None
        prefetched: asyncio.Future[list[Message]] | None = None
        while not self.stop.is_set():
            messages = await (prefetched or self._read(conn, cursor))
            prefetched = None
            if not messages:
                # A busy log's short pauses need not each write the progress row.
                if (cursor, last_seq) != recorded or (
                        time.monotonic() - recorded_at >= self.poll_seconds / 2):
                    await progress.record(conn, self.settings.name, cursor, last_seq)
                    recorded, recorded_at = (cursor, last_seq), time.monotonic()
                await self._wait(conn)
                if await self._tail_went_back(js, last_seq):
                    last_seq, cursor = await self._resume(js, conn)
                continue
            if self.standby_guard:
                # Nothing goes on the stream that a failover could take from the store.
                await replication.wait_until_standbys_have(conn, self.stop)
            # Read the next batch while this one is published: store and broker work in
            # parallel. It is used only if this batch is confirmed.
            prefetched = asyncio.ensure_future(self._read(conn, messages[-1].cursor))
            try:
                with span("aura.mirror.publish", stream=self.settings.name,
                          messages=len(messages), first_position=messages[0].position):
                    last_seq = await publisher.publish(messages, last_seq)
                cursor = messages[-1].cursor
                self.published += len(messages)
                unconfirmed.succeeded()
            except Exception as e:
                await prefetched
                prefetched = None
                delay = unconfirmed.failed(e)
                self.log.warning("batch not confirmed; re-reading the stream's tail",
                                 error=f"{type(e).__name__}: {e}",
                                 retry_in_seconds=round(delay, 3))
                await self._sleep(delay)
                last_seq, cursor = await self._resume(js, conn)
                continue
            # Progress is for `status` only (the stream is the truth): twice a second is enough.
            if time.monotonic() - recorded_at > 0.5:
                await progress.record(conn, self.settings.name, cursor, last_seq)
                recorded, recorded_at = (cursor, last_seq), time.monotonic()

    async def _resume(
        self, js: JetStreamContext, conn: psycopg.AsyncConnection[Any]
    ) -> tuple[int, Cursor]:
        """The stream's last sequence and this store's last mirrored event's cursor."""

        def still_reading(count: int) -> None:
            self.log.warning("reading back past foreign messages", foreign=count)

        resume = await divergence.checked_resume(js, self.settings.name, self.store_id, conn,
                                                 on_foreign=still_reading)
        if resume.foreign:
            # Loudly: someone else publishes on the events' subjects.
            self.log.error(
                "the stream holds messages this store did not publish; they are skipped."
                " Restrict who may publish on the events' subjects",
                foreign_messages=resume.foreign, example=resume.foreign_example,
                subjects=f"{self.settings.subject_prefix}.>",
            )
        return resume.last_seq, resume.cursor

    async def _tail_went_back(self, js: JetStreamContext, last_seq: int) -> bool:
        """While idle, now and then: has the stream lost its tail (a cluster that crashed
        before its data reached the disk)? Then what it lost is published again."""
        if time.monotonic() - self._tail_checked < TAIL_CHECK_SECONDS:
            return False
        self._tail_checked = time.monotonic()
        info = await js.stream_info(self.settings.name)
        if (info.state.last_seq or 0) >= last_seq:
            return False
        self.log.warning("the stream lost messages it had confirmed; publishing them again",
                         stream_seq=info.state.last_seq, expected=last_seq)
        return True

    async def _read(self, conn: psycopg.AsyncConnection[Any], after: Cursor) -> list[Message]:
        # NOTIFYs received so far are for events this read sees; psycopg keeps later ones
        # (even those arriving during other queries) for the next wait, so none is lost.
        self.follow.reading()
        async for _ in conn.notifies(timeout=0):
            self.follow.heard()
        messages = [
            to_message(event, self.settings.subject_prefix, self.store_id)
            for event in await eventlog.read_all_after(conn, after, self.batch_size)
        ]
        if messages:
            self.follow.heard()
        for message in messages:
            if self.max_payload and message.size() > self.max_payload:
                raise ConfigurationError(
                    f"the event at position {message.position} is {message.size():,} bytes"
                    f" as a CloudEvent; the NATS server takes at most {self.max_payload:,}"
                    " (max_payload): raise the server's max_payload"
                )
        return messages

    async def _wait(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for _ in conn.notifies(timeout=self.follow.timeout(self.poll_seconds),
                                     stop_after=1):
            self.follow.heard()
            break

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
