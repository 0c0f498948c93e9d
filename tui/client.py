"""The admin API client: one method per route, answers parsed into `tui.models`.

Failures come in three kinds the UI treats differently: `Unreachable` (the server is down or went away:
keep the data, reconnect), `AuthError` (a wrong token or address: nothing to retry until the owner
fixes it), and `AdminError` (the server understood and said no: show its words, next to the field
they concern when it names one).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tui.models import (
    ImageInfo,
    ProtocolError,
    Run,
    ServerEvent,
    Status,
    parse_event,
    parse_images,
    parse_run,
    parse_status,
)
from tui.sse import read_events


class Unreachable(Exception):
    """The server could not be reached, or the connection broke while it answered."""


class AdminError(Exception):
    """The server refused a request; `message` is its own wording, `field` the setting it concerns."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class AuthError(AdminError):
    """401 or 403: the token is wrong or this address is not allowed; retrying will not help."""


def _error(response: httpx.Response) -> AdminError:
    """The server's own error message ({"error": ..., "field": ...}), or the HTTP reason without one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message, field = body["error"], body.get("field")
    else:
        message, field = f"HTTP {response.status_code} {response.reason_phrase}", None
    kind = AuthError if response.status_code in (401, 403) else AdminError
    return kind(response.status_code, message, field if isinstance(field, str) else None)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProtocolError(f"{response.request.url.path} did not answer with JSON") from None


class AdminClient:
    """Talks to one avatargen server as its owner, with a bearer token."""

    def __init__(self, url: str, token: str, *, timeout: float = 10.0, event_timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        # Longer than the server's heartbeat interval: silence this long means the link is dead.
        self._event_timeout = event_timeout
        self._http = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _unreachable(self, exc: httpx.TransportError) -> Unreachable:
        return Unreachable(f"cannot reach {self.url}: {exc or type(exc).__name__}")

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise _error(response)
        return response

    async def status(self) -> Status:
        return parse_status(_json(await self._call("GET", "/admin/api/status")))

    async def images(self, bucket: str, limit: int) -> list[ImageInfo]:
        """The bucket's newest images, newest first."""
        response = await self._call("GET", "/admin/api/images", params={"bucket": bucket, "limit": limit})
        return parse_images(_json(response))

    async def image_bytes(self, image: ImageInfo) -> bytes:
        return (await self._call("GET", image.url)).content

    async def prompts(self) -> dict[str, Any]:
        """The [prompts] settings under their config names."""
        return _json(await self._call("GET", "/admin/api/prompts"))

    async def save_prompts(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply and save a partial update; the server answers with all the new settings."""
        return _json(await self._call("PUT", "/admin/api/prompts", json=dict(changes)))

    async def sample_prompts(self, changes: Mapping[str, Any], n: int) -> list[str]:
        """Prompts composed as they would be with these (unsaved) changes applied."""
        body = _json(await self._call("POST", "/admin/api/prompts/sample", json={"settings": dict(changes), "n": n}))
        return [str(prompt) for prompt in body["prompts"]]

    async def refill(self, buckets: Sequence[str]) -> Run:
        body = _json(await self._call("POST", "/admin/api/refill", json={"buckets": list(buckets)}))
        return parse_run(body["run"])

    async def abort(self) -> Run:
        return parse_run(_json(await self._call("POST", "/admin/api/abort"))["run"])

    @asynccontextmanager
    async def subscribe(
        self, last_event_id: str | None = None
    ) -> AsyncIterator[AsyncIterator[tuple[str | None, ServerEvent]]]:
        """Open the live event stream; inside the block the server already queues every new event.

        Subscribing before fetching the status means nothing happens unseen between the two. The
        iterator yields (event id, event); a broken stream raises `Unreachable` from the iteration.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self._timeout, read=self._event_timeout)
        try:
            async with self._http.stream("GET", "/admin/api/events", headers=headers, timeout=timeout) as response:
                if response.is_error:
                    await response.aread()
                    raise _error(response)
                yield _events(response)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str | None, ServerEvent]]:
    async for sse in read_events(response.aiter_lines()):
        try:
            data = json.loads(sse.data)
        except ValueError:
            raise ProtocolError(f"the {sse.type!r} event's data is not JSON") from None
        event = parse_event(sse.type, data)
        if event is not None:
            yield sse.id, event
