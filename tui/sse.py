"""Server-Sent Events: the lines of a `text/event-stream` body turned into events.

Written to the WHATWG rules the admin API relies on: `data:` lines join with newlines, a blank line
ends an event, comment lines (the server's `: ping` heartbeats) only prove the link is alive, and the
last `id:` seen is kept so a reconnect can ask for what it missed with `Last-Event-ID`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SseEvent:
    type: str
    data: str
    id: str | None


class SseDecoder:
    """Feed it one line at a time (without the line ending); it returns an event when one is complete."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._type = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value or None
        return None

    def _dispatch(self) -> SseEvent | None:
        data, kind = self._data, self._type
        self._data, self._type = [], ""
        if not data:
            return None
        return SseEvent(kind or "message", "\n".join(data), self.last_id)


async def read_events(lines: AsyncIterable[str]) -> AsyncIterator[SseEvent]:
    """The events in a stream of lines, in order, as each one completes."""
    decoder = SseDecoder()
    async for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
