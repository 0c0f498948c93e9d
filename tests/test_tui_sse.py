"""The panel's live link: SSE decoding over real HTTP, and reconnecting with Last-Event-ID after a break."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support import serve_asgi
from tui.client import AdminClient
from tui.connection import Backoff, follow
from tui.messages import Connected, Disconnected, Received
from tui.models import LogEntry
from tui.sse import SseDecoder, SseEvent, read_events


def decode(lines: list[str]) -> list[SseEvent]:
    decoder = SseDecoder()
    return [event for line in lines if (event := decoder.feed(line)) is not None]


def test_data_lines_join_and_a_blank_line_ends_the_event() -> None:
    assert decode(["event: log", "data: one", "data:two", "", "data: {}", ""]) == [
        SseEvent("log", "one\ntwo", None),
        SseEvent("message", "{}", None),
    ]


def test_comments_are_heartbeats_and_the_last_id_carries_over() -> None:
    assert decode([": ping", "", "id: 7", "event: state", "data: a", "", ": ping", "", "data: b", ""]) == [
        SseEvent("state", "a", "7"),
        SseEvent("message", "b", "7"),
    ]


def test_an_event_without_data_is_not_dispatched() -> None:
    assert decode(["event: log", "id: 3", "", "retry: 2000", ""]) == []


async def chunked_stream(request: Request) -> Response:
    """Events cut at awkward places and mixed line endings, as a proxy may deliver them."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in (b": connected\n\nid: 1\nevent: log\nda", b'ta: {"n": 1}\n', b"\n", b": ping\n\n",
                      b'id: 2\r\nevent: state\r\ndata: {"n": 2}\r\n\r\n'):
            yield chunk
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="text/event-stream")


async def test_events_are_read_whole_from_a_real_stream() -> None:
    app = Starlette(routes=[Route("/events", chunked_stream)])
    async with (
        serve_asgi(app, timeout_graceful_shutdown=1) as url,
        httpx.AsyncClient() as client,
        client.stream("GET", f"{url}/events") as reply,
    ):
        events = [event async for event in read_events(reply.aiter_lines())]
    assert events == [SseEvent("log", '{"n": 1}', "1"), SseEvent("state", '{"n": 2}', "2")]


STATUS: dict[str, Any] = {
    "state": "idle", "run": None, "last_run": None,
    "buckets": {"unique": {"count": 1, "min": 0, "max": 2}, "fallback": {"count": 0, "min": 0, "max": 3}},
    "gpu": {"provider": "simulated", "machine_state": "off"},
    "cost": {"today": 0, "month": 0, "daily_budget": 5, "billed_seconds_today": 0, "billed_seconds_month": 0},
}


def log_event(event_id: int, message: str) -> str:
    data = {"time": "2025-01-01T12:00:00+00:00", "level": "info", "message": message}
    return f"id: {event_id}\nevent: log\ndata: {json.dumps(data)}\n\n"


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
        if isinstance(message, Received) and message.event.message == "after the break":
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


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=4)
    assert [backoff.delay(attempt) for attempt in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
