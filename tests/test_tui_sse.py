"""The panel's live link: the admin client reading events over real HTTP, and reconnecting with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from avatargen.api import AdminClient, LogEntry
from tests.support import serve_asgi
from tui.connection import Backoff, follow
from tui.messages import Connected, Disconnected, Received


def log_event(event_id: int, message: str) -> str:
    data = {"time": "2025-01-01T12:00:00+00:00", "level": "info", "message": message}
    return f"id: {event_id}\nevent: log\ndata: {json.dumps(data)}\n\n"


async def chunked_stream(request: Request) -> Response:
    """Events cut at awkward places, heartbeats and mixed line endings, as a proxy may deliver them."""

    async def body() -> AsyncIterator[bytes]:
        first, second = log_event(1, "one").encode(), log_event(2, "two").replace("\n", "\r\n").encode()
        for chunk in (b"retry: 2000\n: connected\n\n", first[:25], first[25:-1], first[-1:], b": ping\n\n",
                      second, b"event: weather\ndata: {}\n\n", b": ping\r\n\r\n"):
            yield chunk
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="text/event-stream")


async def test_events_are_read_whole_from_a_real_stream() -> None:
    app = Starlette(routes=[Route("/admin/api/events", chunked_stream)])
    async with (
        serve_asgi(app, timeout_graceful_shutdown=1) as url,
        AdminClient(url, "token") as client,
        client.subscribe() as stream,
    ):
        events = [(event_id, event) async for event_id, event in stream]
    assert [(event_id, event.message) for event_id, event in events if isinstance(event, LogEntry)] == [
        ("1", "one"), ("2", "two")]
    assert len(events) == 2  # heartbeats carry no event; an unknown kind (a newer server) is skipped


STATUS: dict[str, Any] = {
    "state": "idle", "run": None, "last_run": None,
    "buckets": {"unique": {"count": 1, "min": 0, "max": 2}, "fallback": {"count": 0, "min": 0, "max": 3}},
    "gpu": {"provider": "simulated", "machine_state": "off"},
    "cost": {"today": 0, "month": 0, "daily_budget": 5, "billed_seconds_today": 0, "billed_seconds_month": 0},
}


async def test_a_broken_stream_is_reported_and_resumed_from_the_last_event_id() -> None:
    """A stand-in serving only the two routes the link uses: its first stream ends after one event."""
    asked_from: list[str | None] = []

    async def status(request: Request) -> Response:
        return JSONResponse(STATUS)

    async def events(request: Request) -> Response:
        asked_from.append(request.headers.get("last-event-id"))
        first = len(asked_from) == 1

        async def body() -> AsyncIterator[str]:
            yield log_event(41 if first else 42, "before the break" if first else "after the break")
            if not first:
                await asyncio.Event().wait()  # stays open, as a live stream does

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/admin/api/status", status), Route("/admin/api/events", events)])
    reports: list[Any] = []
    second_log = asyncio.Event()

    def report(message: Any) -> None:
        reports.append(message)
        if isinstance(message, Received) and isinstance(message.event, LogEntry) \
                and message.event.message == "after the break":
            second_log.set()

    async with serve_asgi(app, timeout_graceful_shutdown=1) as url:
        client = AdminClient(url, "token")
        link = asyncio.create_task(follow(client, report, Backoff(initial=0.01, maximum=0.01)))
        try:
            await asyncio.wait_for(second_log.wait(), 10)
        finally:
            link.cancel()
            await client.aclose()

    assert asked_from == [None, "41"]
    kinds = [type(message) for message in reports]
    assert kinds == [Connected, Received, Disconnected, Connected, Received]
    broken = reports[2]
    assert (broken.reason, broken.attempt, broken.retry_in) == ("the server closed the event stream", 1, 0.01)
    assert all(isinstance(message.event, LogEntry) for message in reports if isinstance(message, Received))
