"""The event hub: the generator tells, the admin API's SSE stream and the TUI listen.

Publishing never waits for a listener. Every event gets a sequence id and is kept in a short history,
so a client that reconnects with Last-Event-ID gets what it missed; a new client (or one whose last id
is from before a restart) gets the recent `log` events first, so the owner's log does not start empty.
A live `preview` is not kept (it is stale a second later, and a few kB each would crowd the history).
Each listener has a bounded queue: a slow listener loses `progress` and `preview` events first (the next
one supersedes them anyway); one that falls behind on events that matter is cut off, and catches up from
the history when it reconnects.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, overload

from avatargen.api.wire import LogEntry, encode_event

COALESCED = frozenset({"progress", "buckets", "preview"})
EPHEMERAL = frozenset({"preview"})  # sent to who listens now, never replayed


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]


class Stoppable(Protocol):
    """What tells a listener to stop: an asyncio or anyio Event."""

    async def wait(self) -> Any: ...


class ListenerTooSlow(Exception):
    """The listener's queue overflowed with events that cannot be dropped; it should reconnect."""


class _Listener:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(size)

    def offer(self, event: Event) -> bool:
        """Queue the event; False when the listener is too slow to keep."""
        if self.queue.full() and event.type in COALESCED:
            return True  # a later progress/buckets event replaces this one
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def cut_off(self) -> None:
        """Replace what is queued with the end marker, waking the reader."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Subscription:
    """One listener's events, from the moment it subscribed (after its backlog). Close it, or use `with`."""

    def __init__(self, hub: EventHub, listener: _Listener, backlog: list[Event]) -> None:
        self._hub = hub
        self._listener = listener
        self._backlog = deque(backlog)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening (again: nothing)."""
        self._hub._listeners.discard(self._listener)

    @overload
    async def next(self) -> Event: ...

    @overload
    async def next(self, timeout: float) -> Event | None: ...

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event; with a timeout, None when nothing came within it."""
        if self._backlog:
            return self._backlog.popleft()
        try:
            async with asyncio.timeout(timeout):  # not wait_for, which can swallow a cancel on 3.11
                event = await self._listener.queue.get()
        except TimeoutError:
            return None
        if event is None:
            raise ListenerTooSlow
        return event

    async def until(self, stop: Stoppable) -> AsyncIterator[Event]:
        """The events, until `stop` is set (the server is shutting down) or this listener is cut off for
        being too slow (its client reconnects with Last-Event-ID and catches up from the history)."""
        stopped = asyncio.ensure_future(stop.wait())
        pending: asyncio.Future[Event] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(self.next())
                await asyncio.wait((pending, stopped), return_when=asyncio.FIRST_COMPLETED)
                if not pending.done():
                    return
                try:
                    event = pending.result()
                except ListenerTooSlow:
                    return
                yield event
        finally:
            for waiting in (pending, stopped):
                if waiting is not None:
                    waiting.cancel()


class EventHub:
    def __init__(self, history: int = 1000, queue_size: int = 256, recent_logs: int = 200) -> None:
        self._ids = itertools.count(1)
        self._last_id = 0
        self._history: deque[Event] = deque(maxlen=history)
        self._recent_logs: deque[Event] = deque(maxlen=recent_logs)  # kept apart: progress floods the history
        self._listeners: set[_Listener] = set()
        self._queue_size = queue_size

    @property
    def last_id(self) -> int:
        """The id of the last event published (a preview's too, though the history does not keep it)."""
        return self._last_id

    def publish(self, type_: str, data: dict[str, Any]) -> Event:
        """Record and fan out an event; never blocks. Call from the event loop's thread."""
        event = Event(next(self._ids), type_, data)
        self._last_id = event.id
        if type_ not in EPHEMERAL:
            self._history.append(event)
        if type_ == "log":
            self._recent_logs.append(event)
        for listener in list(self._listeners):
            if not listener.offer(event):
                self._listeners.discard(listener)
                listener.cut_off()
        return event

    def since(self, last_id: int) -> list[Event]:
        return [event for event in self._history if event.id > last_id]

    def subscribe(self, last_id: int | None = None) -> Subscription:
        """Listen from now on, after a replay: what came after last_id, or the recent log without one (a panel
        that connects shows what the server logged before it).

        Registered at once, not when first read: a caller that subscribes before it answers knows that
        nothing published after the answer can be missed."""
        listener = _Listener(self._queue_size)
        backlog = self.since(last_id) if last_id is not None and last_id <= self.last_id else list(self._recent_logs)
        self._listeners.add(listener)
        return Subscription(self, listener, backlog)

    @property
    def listener_count(self) -> int:
        return len(self._listeners)


class EventLogHandler(logging.Handler):
    """Forwards log records to the hub as `log` events, so the owner's TUI shows them live.

    Records from other threads are handed to the loop's thread, which owns the hub.
    """

    def __init__(self, hub: EventHub, loop: asyncio.AbstractEventLoop, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._hub = hub
        self._loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        name, data = encode_event(LogEntry(datetime.fromtimestamp(record.created, UTC), record.levelname.lower(),
                                           record.getMessage()))
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._hub.publish(name, data)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._hub.publish, name, data)
