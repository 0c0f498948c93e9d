"""The admin API client: one method per route, answers decoded into `avatargen.api.wire` types.

Every side that talks to a server as its owner uses this one: the control panel, `avatargen status`,
`refill` and `abort`, the benchmarks and the tests. It imports neither Starlette nor Textual, so a
command line that only asks for the status starts quickly.

Failures come in three kinds a caller treats differently: `Unreachable` (the server is down or went
away: keep the data, reconnect), `AuthError` (a wrong token or address: nothing to retry until the
owner fixes it), and `AdminError` (the server understood and said no: show its words, next to the
field they concern when it names one). `ProtocolError` means the answer made no sense.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, aconnect_sse

from avatargen.api.wire import (
    History,
    ImageInfo,
    ProtocolError,
    RunView,
    ServerEvent,
    Status,
    decode_event,
    decode_run,
)
from avatargen.http_client import HttpClient

Events = AsyncIterator[tuple[str | None, ServerEvent]]


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


def _image_path(bucket: str, image_id: str, *action: str) -> str:
    return "/".join(["/admin/api/images", quote(bucket, safe=""), quote(image_id, safe=""), *action])


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProtocolError(f"{response.request.url.path} did not answer with JSON") from None


class AdminClient(HttpClient):
    """Talks to one avatargen server as its owner, with a bearer token. Close it (or use `async with`).

    Its pool is its own (the server's address and the token are the pool's settings), closed with it.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 10.0, event_timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        super().__init__(None, timeout=timeout, base_url=self.url, headers={"Authorization": f"Bearer {token}"})
        self._timeout = timeout
        # Longer than the server's heartbeat interval: silence this long means the link is dead.
        self._event_timeout = event_timeout

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
        return Status.from_json(_json(await self._call("GET", "/admin/api/status")))

    async def history(self, days: int = 30) -> History:
        """Spend, billed time and images per day over the last `days` days, and a run by the minute."""
        return History.from_json(_json(await self._call("GET", "/admin/api/history", params={"days": days})))

    async def images(self, bucket: str, limit: int, *, held: bool = False) -> list[ImageInfo]:
        """The bucket's newest images, newest first; `held`: those the safety gate held back instead."""
        params = {"bucket": bucket, "limit": limit, **({"held": "true"} if held else {})}
        return ImageInfo.list_from_json(_json(await self._call("GET", "/admin/api/images", params=params)))

    async def image_bytes(self, image: ImageInfo) -> bytes:
        """The image's pixels (a held one's too: the owner must see what the gate held back)."""
        return (await self._call("GET", _image_path(image.bucket, image.id))).content

    async def delete_image(self, bucket: str, image_id: str) -> None:
        """Delete an image, published or held back, for good."""
        await self._call("DELETE", _image_path(bucket, image_id))

    async def keep_image(self, bucket: str, image_id: str, kept: bool = True) -> ImageInfo:
        """Keep a fallback for good (never retired), or undo that."""
        return ImageInfo.one_from_json(_json(await self._call("POST" if kept else "DELETE",
                                                              _image_path(bucket, image_id, "keep"))))

    async def move_image(self, bucket: str, image_id: str, to: str) -> ImageInfo:
        """Move an image into another bucket; the answer is the image where it is now."""
        response = await self._call("POST", _image_path(bucket, image_id, "move"), json={"to": to})
        return ImageInfo.one_from_json(_json(response))

    async def approve_image(self, bucket: str, image_id: str) -> ImageInfo:
        """Publish an image the safety gate held back."""
        return ImageInfo.one_from_json(_json(await self._call("POST", _image_path(bucket, image_id, "approve"))))

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

    async def refill(self, buckets: Sequence[str] = ()) -> RunView:
        """Start a run that fills the named buckets (none named: every bucket) to their max."""
        body = _json(await self._call("POST", "/admin/api/refill", json={"buckets": list(buckets)}))
        return decode_run(body["run"])

    async def abort(self) -> RunView:
        return decode_run(_json(await self._call("POST", "/admin/api/abort"))["run"])

    @asynccontextmanager
    async def subscribe(self, last_event_id: str | None = None) -> AsyncIterator[Events]:
        """Open the live event stream; inside the block the server already queues every new event.

        Subscribing before fetching the status means nothing happens unseen between the two. The
        iterator yields (event id, event); a broken stream raises `Unreachable` from the iteration.
        `last_event_id` asks for the events after that one first ("0": the server's whole history).
        """
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        timeout = httpx.Timeout(self._timeout, read=self._event_timeout)
        try:
            async with aconnect_sse(self._http, "GET", "/admin/api/events", headers=headers,
                                    timeout=timeout) as source:
                if source.response.is_error:
                    await source.response.aread()
                    raise _error(source.response)
                yield self._decoded(source.aiter_sse())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    @staticmethod
    async def _decoded(stream: AsyncIterator[Any]) -> Events:
        try:
            async for sse in stream:
                if not sse.data:
                    continue  # a heartbeat, or a retry hint: only proof that the link is alive
                try:
                    data = json.loads(sse.data)
                except ValueError:
                    raise ProtocolError(f"the {sse.event!r} event's data is not JSON") from None
                event = decode_event(sse.event, data)
                if event is not None:
                    yield sse.id or None, event
        except SSEError as exc:
            raise ProtocolError(f"the event stream is not Server-Sent Events: {exc}") from None

    async def first_event(self, matches: Callable[[ServerEvent], bool], *, since: str | None = None) -> ServerEvent:
        """The first event that `matches` (from after event `since`, "0" for the server's history, else
        from now on). Wrap it in `asyncio.timeout`: it waits as long as the server keeps the stream open."""
        async with self.subscribe(since) as events:
            async for _, event in events:
                if matches(event):
                    return event
        raise Unreachable(f"{self.url} closed the event stream before the awaited event")
