"""Paperspace machines: the v1 API client and the provider the refill engine drives.

The client speaks `https://api.paperspace.com/v1` (Bearer auth; the older `api.paperspace.io` with
`X-Api-Key` was retired in July 2024). It retries what a busy cloud API throws at a client, 429
(honouring `Retry-After`), 5xx, timeouts and refused connections, with exponential backoff, and fails
at once on any other 4xx with the API's own message. The team API key never appears in an error, a
log line or a repr.

The provider turns that into start / wait until ready / stop. It waits for the state "ready" exactly
(`serviceready` comes earlier: the OS is up, Paperspace's agent is not), follows the start event so a
start that fails (no capacity) ends the wait at once rather than at the timeout, and keeps asking for
a stop until the machine is confirmed off, because an idle machine left on costs the owner money.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx

from avatargen.config import Secret
from avatargen.durations import format_duration
from avatargen.gpu.base import OFF, READY, MachineError, MachineTimeout
from avatargen.retry import backoff_delay, parse_retry_after

log = logging.getLogger(__name__)

_SNIPPET = 200  # characters of a non-JSON error body worth quoting


class PaperspaceError(Exception):
    """A request the Paperspace API refused or could not answer: HTTP status (None when unreachable),
    the API's error code and its message."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        where = f"{status} {code}" if status is not None else code
        super().__init__(f"Paperspace API error {where}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """Worth asking again: unreachable, rate limited or a server-side failure."""
        return self.status is None or self.status == 429 or self.status >= 500


def _error_from(response: httpx.Response) -> PaperspaceError:
    """The API's `{"code", "message"}` error, or the best that can be said about a body that is not one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return PaperspaceError(response.status_code, str(body.get("code") or response.reason_phrase),
                               str(body["message"]))
    text = " ".join(response.text.split())[:_SNIPPET] or response.reason_phrase
    return PaperspaceError(response.status_code, f"HTTP_{response.status_code}", text)


class PaperspaceClient:
    """The Paperspace v1 machine routes avatargen uses, with retries."""

    def __init__(self, api_url: str, api_key: Secret, *, http: httpx.AsyncClient | None = None,
                 max_retries: int = 6, backoff: float = 0.5, timeout: float = 30.0) -> None:
        self._api_url = api_url.rstrip("/")
        self._api_key = api_key
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._owns_http = http is None
        self._max_retries = max_retries
        self._backoff = backoff

    def __repr__(self) -> str:
        return f"PaperspaceClient({self._api_url!r}, api_key={self._api_key!r})"

    async def get_machine(self, machine_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/machines/{machine_id}")

    async def start(self, machine_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Ask for a boot; returns at once with the machine and the event to follow."""
        return self._machine_and_event(await self._request("PATCH", f"/machines/{machine_id}/start"))

    async def stop(self, machine_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Ask for a shutdown; returns at once with the machine and the event to follow."""
        return self._machine_and_event(await self._request("PATCH", f"/machines/{machine_id}/stop"))

    async def get_event(self, event_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/machine-events/{event_id}")

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> PaperspaceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @staticmethod
    def _machine_and_event(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(body.get("data"), dict) or not isinstance(body.get("event"), dict):
            raise PaperspaceError(200, "BAD_RESPONSE", f"expected {{\"data\", \"event\"}}, got keys {sorted(body)}")
        return body["data"], body["event"]

    async def _request(self, method: str, path: str) -> Any:
        """One API call, retried on 429, 5xx and transport failures; the parsed JSON object."""
        headers = {"Authorization": f"Bearer {self._api_key.reveal()}", "Accept": "application/json"}
        attempt = 0
        while True:
            retry_after = None
            try:
                response = await self._http.request(method, self._api_url + path, headers=headers)
            except httpx.TransportError as exc:
                error = PaperspaceError(None, "UNREACHABLE",
                                        f"cannot reach {self._api_url}: {type(exc).__name__} {exc}".rstrip())
            else:
                if response.is_success:
                    return self._json_object(response, method, path)
                error = _error_from(response)
                if response.status_code == 429:
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
            if not error.retryable or attempt >= self._max_retries:
                raise error
            delay = retry_after if retry_after is not None else backoff_delay(attempt, base=self._backoff)
            log.warning("%s %s: %s; retry %d/%d in %.1fs", method, path, error, attempt + 1, self._max_retries,
                        delay)
            await asyncio.sleep(delay)
            attempt += 1

    @staticmethod
    def _json_object(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            snippet = " ".join(response.text.split())[:_SNIPPET]
            raise PaperspaceError(response.status_code, "BAD_RESPONSE",
                                  f"{method} {path} answered something that is not a JSON object: {snippet!r}")
        return body


class _StateWatch:
    """Passes a machine state on to `on_state` only when it differs from the last one seen."""

    def __init__(self, on_state: Callable[[str], None]) -> None:
        self._on_state = on_state
        self.last: str | None = None

    def __call__(self, state: str) -> None:
        if state != self.last:
            self.last = state
            self._on_state(state)


class PaperspaceProvider:
    """A Paperspace machine (or the simulated one, which speaks the same API) as a refill `Provider`.

    `sd_url` may contain `{public_ip}`, replaced by the machine's current public address: a dynamic
    address changes at each start.
    """

    bills = True

    def __init__(self, client: PaperspaceClient, machine_id: str, *, sd_url: str, poll_every: float,
                 stop_timeout: float, name: str = "paperspace") -> None:
        self.name = name
        self._client = client
        self._machine_id = machine_id
        self._sd_url = sd_url
        self._poll_every = poll_every
        self._stop_timeout = stop_timeout
        self._start_event: str | None = None
        self._public_ip: str | None = None

    def __repr__(self) -> str:
        return f"PaperspaceProvider(name={self.name!r}, machine_id={self._machine_id!r}, client={self._client!r})"

    async def machine_state(self) -> str:
        return (await self._read_machine())["state"]

    async def start(self) -> None:
        try:
            machine, event = await self._client.start(self._machine_id)
        except PaperspaceError as exc:
            raise MachineError(f"cannot start machine {self._machine_id}: {exc}") from exc
        self._public_ip = machine.get("publicIp") or self._public_ip
        self._start_event = event.get("id")

    async def wait_ready(self, timeout: float, on_state: Callable[[str], None]) -> None:
        watch = _StateWatch(on_state)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    state = (await self._read_machine())["state"]
                    watch(state)
                    if state == READY:
                        return
                    await self._check_boot(state)
                    await asyncio.sleep(self._poll_every)
        except TimeoutError:
            raise MachineTimeout(f"machine {self._machine_id} was not ready after {format_duration(timeout)} "
                                 f"(still {watch.last or 'unknown'})") from None

    async def stop(self, on_state: Callable[[str], None]) -> None:
        watch = _StateWatch(on_state)
        problem = "no answer from the API yet"
        requested = False
        stop_event: str | None = None
        failures = 0
        try:
            async with asyncio.timeout(self._stop_timeout):
                while True:
                    try:
                        if not requested:
                            _, event = await self._client.stop(self._machine_id)
                            requested, stop_event = True, event.get("id")
                        state = (await self._client.get_machine(self._machine_id))["state"]
                        watch(state)
                        if state == OFF:
                            return
                        if stop_event is not None:
                            event = await self._client.get_event(stop_event)
                            if event.get("state") in ("done", "error", "cancelled"):  # ended, machine not off
                                problem = f"the stop ended {event.get('state')}: {event.get('error') or 'no reason'}"
                                requested = False
                        failures = 0
                        await asyncio.sleep(self._poll_every)
                    except PaperspaceError as exc:
                        problem = str(exc)
                        delay = backoff_delay(failures, base=self._poll_every)
                        log.warning("stopping machine %s: %s; trying again in %.1fs", self._machine_id, exc, delay)
                        failures += 1
                        await asyncio.sleep(delay)
        except TimeoutError:
            raise MachineError(
                f"could not confirm that machine {self._machine_id} stopped within "
                f"{format_duration(self._stop_timeout)} (last state: {watch.last or 'unknown'}; {problem}): "
                "stop it by hand, it is billed while it is on"
            ) from None

    def sd_url(self) -> str:
        if "{public_ip}" not in self._sd_url:
            return self._sd_url
        if not self._public_ip:
            raise MachineError(f"sd.url uses {{public_ip}} but machine {self._machine_id} has no public address")
        return self._sd_url.replace("{public_ip}", self._public_ip)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _read_machine(self) -> dict[str, Any]:
        try:
            machine = await self._client.get_machine(self._machine_id)
        except PaperspaceError as exc:
            raise MachineError(f"cannot read machine {self._machine_id}: {exc}") from exc
        self._public_ip = machine.get("publicIp") or self._public_ip
        return machine

    async def _check_boot(self, state: str) -> None:
        """Fail the wait at once when the boot is over without the machine being ready."""
        if self._start_event is None:
            event_state, error = "done", None
        else:
            try:
                event = await self._client.get_event(self._start_event)
            except PaperspaceError as exc:
                raise MachineError(f"cannot follow the start of machine {self._machine_id}: {exc}") from exc
            event_state, error = event.get("state"), event.get("error")
        if event_state == "error":
            raise MachineError(f"machine {self._machine_id} could not start: {error or 'no reason given'}")
        if event_state == "cancelled" or (event_state == "done" and state in (OFF, "stopping")):
            raise MachineError(f"machine {self._machine_id} is {state}: its start was cancelled or someone "
                               "stopped it")
