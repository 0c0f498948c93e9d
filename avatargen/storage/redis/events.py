"""The run's events across replicas: each replica's hub copied into a Redis stream and back out.

A panel connected to any replica sees what the generator does on another: every event published in a
replica's hub (state, progress, image, log) is appended to one stream (`<prefix>:events`, the last
`STREAM_LENGTH` kept), and every replica reads the stream and publishes the others' events into its own
hub. `buckets` events stay local: each replica works its levels out from the shared buckets itself.

The stream rather than pub/sub: a replica whose connection dropped for a moment reads on from the last
entry it saw instead of losing what was said meanwhile. While Redis is down the events of that time are
not relayed (the panel connected to the generator's own replica still gets them); the relay says so
once and carries on when Redis answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

from avatargen.events import Event, EventHub, ListenerTooSlow
from avatargen.storage.errors import StorageUnavailable
from avatargen.storage.redis.connection import Outage, RedisStorage

log = logging.getLogger("avatargen.storage")

STREAM_LENGTH = 1000
LOCAL_ONLY = frozenset({"buckets"})


class EventRelay:
    """Copies this replica's events to the other replicas and theirs into this replica's hub."""

    def __init__(self, storage: RedisStorage, hub: EventHub, *, block: float = 1.0) -> None:
        self.storage = storage
        self.hub = hub
        self.block = block
        self.origin = secrets.token_hex(6)
        self._stream = storage.key("events")
        self._relayed: set[int] = set()  # ids of the events this relay published in the hub itself
        self._sending = Outage("this replica's events do not reach panels connected to other replicas",
                               "this replica's events are relayed again")
        self._receiving = Outage("other replicas' events do not reach panels connected to this one",
                                 "other replicas' events are relayed again")
        self.ready = asyncio.Event()  # set once both directions are live (its position in the stream is known)

    async def run(self) -> None:
        """Relay both ways until cancelled (a task of the server's lifespan)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._send(), name="event relay: send")
            tasks.create_task(self._receive(), name="event relay: receive")

    async def _send(self) -> None:
        while True:
            self._relayed.clear()  # a new subscription never sees the events published before it
            with self.hub.subscribe(self.hub.last_id) as events:  # from now on: no replay
                await self.ready.wait()
                try:
                    while True:
                        await self._append(await events.next())
                except ListenerTooSlow:
                    log.warning("the event relay fell behind; events published meanwhile were not relayed")

    async def _append(self, event: Event | None) -> None:
        if event is None or event.type in LOCAL_ONLY:
            return
        if event.id in self._relayed:
            self._relayed.discard(event.id)
            return
        fields = {"origin": self.origin, "type": event.type, "data": json.dumps(event.data)}
        try:
            async with self.storage.guard("relay an event"):
                await self.storage.client.xadd(self._stream, fields,  # type: ignore[arg-type]
                                               maxlen=STREAM_LENGTH, approximate=True)
        except StorageUnavailable as exc:
            self._sending.failed(exc)
        else:
            self._sending.ended()

    async def _receive(self) -> None:
        client = self.storage.blocking_client()
        last = "$"  # from now on: the panel asks this replica for what it missed before (Last-Event-ID)
        while True:
            try:
                async with self.storage.guard("read the events of other replicas",
                                              timeout=self.block + self.storage.timeout):
                    if last == "$":  # pin the position first, so nothing slips between two reads
                        newest: Any = await client.xrevrange(self._stream, count=1)
                        last = newest[0][0].decode() if newest else "0-0"
                        self.ready.set()
                    reply: Any = await client.xread({self._stream: last}, count=100, block=round(self.block * 1000))
            except StorageUnavailable as exc:
                self._receiving.failed(exc)
                await asyncio.sleep(self.block)
                continue
            self._receiving.ended()
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    if fields[b"origin"].decode() != self.origin:
                        event = self.hub.publish(fields[b"type"].decode(), json.loads(fields[b"data"]))
                        self._relayed.add(event.id)
