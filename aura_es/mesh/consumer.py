"""A durable JetStream consumer that applies aura-es events to a service's own tables
exactly once.

One loop: fetch a batch from the durable pull consumer; in ONE transaction of the
service's database lock the consumer's checkpoint, skip every message at or below it
(a redelivery), validate the rest against the registry, upcast them to the version each
subscription was written for, hand them to the handlers, move the checkpoint; commit;
then acknowledge. A crash before the commit applies nothing (the messages come back); a
crash after it and before the acknowledgement gets the messages back too, and the
checkpoint turns them away. The checkpoint is the *stream sequence*, which is the log's
order (positions are not increasing along the stream since appends commit in parallel).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import nats
import orjson
import psycopg
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError

from aura_es.db import connect
from aura_es.dsn import nats_servers
from aura_es.errors import ConfigurationError
from aura_es.log import get_logger
from aura_es.mesh import checkpoint, rejected
from aura_es.mirror import schema_registry
from aura_es.retry import Backoff
from aura_es.schemas.generate import parse_schema_uri, schema_uri

Upcaster = Callable[[dict[str, Any]], None]
#: Waits after a failed batch (handler error, database or broker unwell).
RETRY = Backoff(base=0.5, cap=30.0)


@dataclass(frozen=True)
class Delivery:
    """One event as a handler gets it: ``data`` is at the subscription's version."""

    topic: str
    version: int
    data: dict[str, Any]
    aggregate_id: UUID
    position: int
    stream_seq: int
    event_id: str
    cloud_event: dict[str, Any] = field(repr=False)


Handler = Callable[[psycopg.Cursor[Any], Delivery], None]


@dataclass(frozen=True)
class Subscription:
    """``handler`` gets events of ``topic`` at ``version`` (the one the service was
    built for): older ones go through ``upcasters[k]`` (k to k+1) first; newer ones are
    handed over as they are, which FULL compatibility makes safe (checked against
    ``version``'s schema first)."""

    topic: str
    version: int
    handler: Handler
    upcasters: Mapping[int, Upcaster] = field(default_factory=dict)


class Rejected(Exception):
    """A message whose data does not fit its schema: recorded, never applied."""


class MeshConsumer:
    def __init__(
        self, name: str, database_url: str, nats_url: str,
        subscriptions: Sequence[Subscription], *, stream: str = "AURA_EVENTS",
        subject_prefix: str = "aura.events", batch_size: int = 100,
        ack_wait_seconds: float = 30.0,
        on_committed: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.database_url = database_url
        self.nats_url = nats_url
        self.subscriptions = {s.topic: s for s in subscriptions}
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.batch_size = batch_size
        self.ack_wait_seconds = ack_wait_seconds
        #: Called after each commit with the number of events applied (before the acks).
        self.on_committed = on_committed
        self.stop = asyncio.Event()
        self.applied = 0
        self.log = get_logger(component="mesh", consumer=name)
        self._schemas: dict[str, Draft202012Validator] = {}
        self._failures = 0

    async def run(self) -> None:
        """Until ``stop`` is set. Broker and database outages are retried for ever."""
        nc = await nats.connect(nats_servers(self.nats_url), max_reconnect_attempts=-1,
                                reconnect_time_wait=0.5, connect_timeout=5,
                                error_cb=self._nats_error)
        try:
            with connect(self.database_url) as conn:
                checkpoint.ensure(conn, self.name, self.stream)
                rejected.ensure(conn)
                while not self.stop.is_set():
                    try:
                        sub = await self._subscribe(nc)
                        await self._consume(nc, sub, conn)
                    except (nats.errors.Error, TimeoutError, OSError) as e:
                        await self._back_off(e)
        finally:
            # Not drain(): what was committed is acknowledged already, and anything else
            # comes back after ack_wait; waiting on a broker that is away helps nobody.
            with contextlib.suppress(Exception):
                await nc.close()

    async def _subscribe(self, nc: Client) -> Any:
        js = nc.jetstream()
        return await js.pull_subscribe(
            f"{self.subject_prefix}.>", durable=self.name, stream=self.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait_seconds, max_ack_pending=self.batch_size,
            ))

    async def _consume(self, nc: Client, sub: Any, conn: psycopg.Connection[Any]) -> None:
        while not self.stop.is_set():
            try:
                msgs: list[Msg] = await sub.fetch(self.batch_size, timeout=1)
            except FetchTimeoutError:
                continue
            try:
                applied = await self._apply(nc, conn, msgs)
            except (psycopg.Error, ConfigurationError, nats.errors.Error) as e:
                await self._nak(msgs)
                await self._back_off(e)
                continue
            except Exception as e:  # a handler's: retried, so a bug fixed resumes
                self.log.error("handler failed", error=f"{type(e).__name__}: {e}")
                await self._nak(msgs)
                await self._back_off(e)
                continue
            self._failures = 0
            self.applied += applied
            if self.on_committed is not None:
                self.on_committed(applied)
            for msg in msgs:  # only now: what was committed is never lost
                await msg.ack()

    async def _apply(self, nc: Client, conn: psycopg.Connection[Any], msgs: list[Msg]) -> int:
        prepared = [(msg, await self._prepare(nc, msg)) for msg in msgs]
        applied = 0
        with conn.transaction(), conn.cursor() as cur:
            last = checkpoint.lock(cur, self.name)
            position = None
            for msg, item in sorted(prepared, key=lambda p: p[0].metadata.sequence.stream):
                seq = msg.metadata.sequence.stream
                if seq <= last:
                    continue  # a redelivery of what this transaction's predecessors applied
                if isinstance(item, Rejected):
                    rejected.record(cur, self.name, seq, msg.data, str(item))
                    self.log.error("message rejected", stream_seq=seq, reason=str(item))
                elif item is not None:
                    self.subscriptions[item.topic].handler(cur, item)
                    applied += 1
                    position = item.position
                last = seq
            checkpoint.advance(cur, self.name, last, position, applied)
        return applied

    async def _prepare(self, nc: Client, msg: Msg) -> Delivery | Rejected | None:
        """The message as its handler's Delivery; None when nothing subscribes to it.

        Whatever a message holds (anyone allowed to publish on the subjects can put one
        there), it is a Delivery, None or Rejected: content never raises, so one bad
        message cannot stall the consumer in retries. Only the service's own setup (a
        missing upcaster or bucket) raises, and is retried."""
        try:
            cloud_event = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return Rejected("not JSON")
        if not isinstance(cloud_event, dict):
            return Rejected("not a CloudEvent (not a JSON object)")
        sub = self.subscriptions.get(str(cloud_event.get("type")))
        if sub is None:
            return None
        data = cloud_event.get("data")
        if not isinstance(data, dict):
            return Rejected("its data is not a JSON object (an undecodable event?)")
        try:
            aggregate_id = UUID(str(cloud_event.get("subject")))
            position = int(cloud_event.get("auraposition") or 0)
        except (ValueError, TypeError):
            return Rejected("its subject is not a UUID or its auraposition not an integer")
        version = sub.version
        uri = cloud_event.get("dataschema")
        if uri is not None:
            parsed = parse_schema_uri(str(uri))
            if parsed is None or parsed[0] != sub.topic:
                return Rejected(f"dataschema {str(uri)[:100]!r} is not a schema of {sub.topic}")
            version = parsed[1]
            problem = await self._invalid(nc, str(uri), data)
            if problem:
                return Rejected(f"data does not fit {uri}: {problem}")
        if version < sub.version:
            data = dict(data)
            for step in range(version, sub.version):
                upcast = sub.upcasters.get(step)
                if upcast is None:
                    raise ConfigurationError(f"{sub.topic}: no upcaster from v{step} to"
                                             f" v{step + 1} in the subscription")
                upcast(data)
        elif version > sub.version:
            # FULL compatibility: the newer data is valid at the version the service knows.
            problem = await self._invalid(nc, schema_uri(sub.topic, sub.version), data,
                                          own=True)
            if problem:
                return Rejected(f"v{version} data does not fit v{sub.version}: {problem}")
        return Delivery(
            topic=sub.topic, version=sub.version, data=data, aggregate_id=aggregate_id,
            position=position, stream_seq=msg.metadata.sequence.stream,
            event_id=str(cloud_event.get("id")), cloud_event=cloud_event,
        )

    async def _invalid(self, nc: Client, uri: str, data: Any, *, own: bool = False
                       ) -> str | None:
        """Why ``data`` does not fit the schema ``uri`` names (None: it fits). A schema
        the registry lacks is the message's fault, unless it is the subscription's own
        version (``own``): then the service is set up wrong, and it is raised."""
        validator = self._schemas.get(uri)
        if validator is None:
            schema = await schema_registry.fetch(nc.jetstream(), uri)
            if schema is None:
                if own:
                    raise ConfigurationError(f"schema {uri} is not in the registry bucket")
                return f"{uri} is not in the registry"
            validator = self._schemas[uri] = Draft202012Validator(schema)
        error = best_match(validator.iter_errors(data))
        if error is None:
            return None
        where = ".".join(str(p) for p in error.absolute_path) or "(data)"
        return f"field {where}: {error.message[:120]}"

    async def _nak(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.nak(delay=RETRY.delay(self._failures + 1))

    async def _back_off(self, error: BaseException) -> None:
        self._failures += 1
        delay = RETRY.delay(self._failures)
        self.log.warning("retrying", error=f"{type(error).__name__}: {error}",
                         retry_in_seconds=round(delay, 3))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)

    async def _nats_error(self, error: Exception) -> None:
        self.log.warning("nats connection", error=f"{type(error).__name__}: {error}")
