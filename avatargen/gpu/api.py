"""What the cloud GPU APIs' clients share: Bearer auth, retries, and errors worded for the owner.

Paperspace and RunPod answer alike where it matters: JSON over HTTPS with a Bearer key, 429 when a
client goes too fast, 5xx when they are in trouble. A client retries what a busy cloud API throws at
it, 429 (honouring `Retry-After`), 5xx, timeouts and refused connections, with exponential backoff,
and fails at once on any other 4xx with the API's own message. The API key never appears in an error,
a log line or a repr.

A request that changes the machine (anything but GET: start, stop, settings) waits first for the client's
`fence`, when it has one: among replicas, the generator lease confirmed for as long as the request may
take (`CHANGE_TIMEOUT`), so a replica that lost its lease never starts or stops the machine of another's run.
A stop may go ahead without it (`without_the_lease`) when Redis, not another replica, is why the lease
could not be confirmed: see `avatargen.generator.machine.Machine.stop`.

A start is billed from the attempt the provider accepted, not from the first one sent: a refused attempt
(an error answer: 429, 5xx) or one that never reached the API (connection refused) starts nothing, as
Paperspace and RunPod bill from the moment the machine starts. An attempt whose outcome is unknown (a
timeout, a connection dropped after the request went out) may have started it: billing counts from that
one, in the owner's favour (`_send_since`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx

from avatargen.config import Secret
from avatargen.http_client import HttpClient
from avatargen.retry import backoff_delay, parse_retry_after

_SNIPPET = 200  # characters of a non-JSON error body worth quoting
# The longest a fenced request that changes the machine may take (the cloud APIs answer them in about a
# second): well within the generator lease's ttl, which the fence guarantees for this long.
CHANGE_TIMEOUT = 5.0

# Awaited with CHANGE_TIMEOUT right before each request that changes the machine; raises to refuse it.
Fence = Callable[[float], Awaitable[None]]
# Set while a stop goes ahead without the lease: the requests it makes skip the fence.
_unfenced: contextvars.ContextVar[bool] = contextvars.ContextVar("unfenced", default=False)


@contextlib.contextmanager
def without_the_lease() -> Iterator[None]:
    """The machine requests made in the block (a stop's) skip the fence."""
    token = _unfenced.set(True)
    try:
        yield
    finally:
        _unfenced.reset(token)


class ApiError(Exception):
    """A request a cloud API refused or could not answer: HTTP status (None when unreachable), an error code
    (the API's own, else the HTTP reason, e.g. NOT_FOUND) and the API's message."""

    vendor = "cloud"

    def __init__(self, status: int | None, code: str, message: str) -> None:
        where = f"{status} {code}" if status is not None else code
        super().__init__(f"{self.vendor} API error {where}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """Worth asking again: unreachable, rate limited or a server-side failure."""
        return self.status is None or self.status == 429 or self.status >= 500


def _snippet(text: str) -> str:
    return " ".join(text.split())[:_SNIPPET]


class CloudApiClient(HttpClient):
    """A cloud API at `api_url` with Bearer auth and retries; subclasses name their `error` type."""

    error: type[ApiError] = ApiError

    def __init__(self, api_url: str, api_key: Secret, *, http: httpx.AsyncClient | None = None,
                 max_retries: int = 6, backoff: float = 0.5, timeout: float = 30.0, fence: Fence | None = None
                 ) -> None:
        super().__init__(http, timeout=timeout)
        self._fence = fence
        self._api_url = api_url.rstrip("/")
        self._api_key = api_key
        self._max_retries = max_retries
        self._backoff = backoff
        self._log = logging.getLogger(type(self).__module__)  # retries show under the vendor's module

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._api_url!r}, api_key={self._api_key!r})"

    async def _request(self, method: str, path: str, *, json: Any = None) -> dict[str, Any]:
        """One API call, retried; the JSON object it answered."""
        return self._object(await self._send(method, path, json=json), method, path)

    def _object(self, response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        """The JSON object a successful call answered; the client's error when it is not one."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self.error(response.status_code, "BAD_RESPONSE",
                             f"{method} {path} answered something that is not a JSON object: "
                             f"{_snippet(response.text)!r}")
        return body

    async def _send(self, method: str, path: str, *, json: Any = None) -> httpx.Response:
        """One API call, retried on 429, 5xx and transport failures; the successful response."""
        return (await self._send_since(method, path, json=json))[0]

    async def _send_since(self, method: str, path: str, *, json: Any = None) -> tuple[httpx.Response, float]:
        """`_send`, and since when (epoch seconds) the request may have taken effect: when the attempt the
        API accepted went out, or the first attempt before it whose outcome is unknown (it may have arrived)."""
        headers = {"Authorization": f"Bearer {self._api_key.reveal()}", "Accept": "application/json"}
        fence = self._fence if method != "GET" and not _unfenced.get() else None
        timeout = CHANGE_TIMEOUT if fence is not None else httpx.USE_CLIENT_DEFAULT
        attempt = 0
        unknown_since: float | None = None
        while True:
            retry_after = None
            if fence is not None:
                await fence(CHANGE_TIMEOUT)  # before each attempt: the lease may have gone meanwhile
            sent = time.time()
            try:
                response = await self._http.request(method, self._api_url + path, headers=headers, json=json,
                                                    timeout=timeout)
            except httpx.TransportError as exc:
                if unknown_since is None and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    unknown_since = sent  # the request may have arrived and been carried out
                error = self.error(None, "UNREACHABLE",
                                   f"cannot reach {self._api_url}: {type(exc).__name__} {exc}".rstrip())
            else:
                if response.is_success:
                    return response, sent if unknown_since is None else unknown_since
                error = self._error_from(response)
                if response.status_code == 429:
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
            if not error.retryable or attempt >= self._max_retries:
                raise error
            delay = retry_after if retry_after is not None else backoff_delay(attempt, base=self._backoff)
            self._log.warning("%s %s: %s; retry %d/%d in %.1fs", method, path, error, attempt + 1,
                              self._max_retries, delay)
            await asyncio.sleep(delay)
            attempt += 1

    def _error_from(self, response: httpx.Response) -> ApiError:
        """The API's error (`{"code", "message"}` or `{"error"}`), or the best that can be said about a body
        that is not one."""
        try:
            body = response.json()
        except ValueError:
            body = None
        message = (body.get("message") or body.get("error")) if isinstance(body, dict) else None
        if message:
            code = body.get("code") if isinstance(body, dict) else None
            return self.error(response.status_code, str(code or _reason_code(response)), str(message))
        return self.error(response.status_code, f"HTTP_{response.status_code}",
                          _snippet(response.text) or response.reason_phrase)


def _reason_code(response: httpx.Response) -> str:
    """An error code from the HTTP reason, in the APIs' own style: 404 -> NOT_FOUND."""
    return response.reason_phrase.upper().replace(" ", "_") or f"HTTP_{response.status_code}"
