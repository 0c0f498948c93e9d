"""Staying live: subscribe to the server's events, and come back after every break.

The loop subscribes first and fetches the status second, so no event falls between the two; it then
relays events until the stream breaks, reports the break, waits with exponential backoff and starts
again, asking the server (Last-Event-ID) for the events it missed. Only a refused token ends it: the
owner must fix that, retrying cannot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from textual.message import Message

from avatargen.api import AdminClient, AdminError, AuthError, ProtocolError, Unreachable
from avatargen.retry import Backoff
from tui.messages import Connected, Disconnected, Received, Refused

DEFAULT_BACKOFF = Backoff()


async def follow(client: AdminClient, report: Callable[[Message], object], backoff: Backoff) -> None:
    """Relay the server's state and events to `report` until the token is refused (or the task is cancelled)."""
    last_id: str | None = None
    failures = 0
    while True:
        try:
            async with client.subscribe(last_id) as events:
                report(Connected(await client.status()))
                failures = 0
                async for event_id, event in events:
                    last_id = event_id or last_id
                    report(Received(event))
            reason = "the server closed the event stream"
        except AuthError as exc:
            report(Refused(exc))
            return
        except AdminError as exc:
            reason = f"{client.url} answered {exc.status}: {exc.message}"
        except (Unreachable, ProtocolError) as exc:
            reason = str(exc)
        failures += 1
        delay = backoff.delay(failures)
        report(Disconnected(reason, delay, failures))
        await asyncio.sleep(delay)
