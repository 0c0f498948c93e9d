"""Delivering messages through Apprise URLs: in a worker thread (Apprise blocks), with retries and a timeout.

Sending never blocks or fails the generator: messages wait in a bounded queue, one task delivers them, and
a message that still cannot be delivered after its retries is logged, counted and kept for the status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from avatargen.api.wire import Notifications
from avatargen.metrics import NOTIFICATIONS_FAILED
from avatargen.redact import redact_url
from avatargen.retry import backoff_delay

log = logging.getLogger("avatargen.notify")

ATTEMPTS = 3  # per URL and message
ATTEMPT_TIMEOUT = 30.0  # seconds one delivery may take (Apprise's own connect/read timeouts are shorter)
QUEUE_SIZE = 100  # messages waiting; past this the newest are dropped (and counted), never the generator blocked


@dataclass(frozen=True)
class Message:
    kind: str  # the event kind ([notify] events), "test" for `avatargen notify --test`
    title: str
    body: str


@dataclass
class Delivery:
    """How delivery went, for the status: a failure the owner never hears of would hide every later one."""

    sent: int = 0
    failed: int = 0
    last_failure: str | None = None
    last_failure_at: float | None = None

    def view(self) -> Notifications:
        at = None if self.last_failure_at is None else datetime.fromtimestamp(self.last_failure_at, UTC)
        return Notifications(self.sent, self.failed, self.last_failure, at)

    def failure(self, what: str) -> None:
        self.failed += 1
        self.last_failure, self.last_failure_at = what, time.time()
        NOTIFICATIONS_FAILED.inc()


def deliver(url: str, message: Message) -> str | None:
    """Send `message` through one Apprise URL (blocking); None when it went, else why not in Apprise's words.
    Apprise is imported here, by the process that sends: loading its plugins costs about 25 MB."""
    import apprise

    sender = apprise.Apprise()
    if not sender.add(url):
        return "not a URL Apprise understands"
    with apprise.LogCapture(level=logging.WARNING) as captured:
        sent = sender.notify(title=message.title, body=message.body)
    if sent:
        return None
    lines = [line.strip() for line in captured.getvalue().splitlines() if line.strip()]
    return lines[-1] if lines else "Apprise could not deliver it"


def label(url: str) -> str:
    """How a URL is shown in the log, the status and `notify --test`: Apprise's own privacy form (tokens and
    passwords shortened or starred), without its option string."""
    import apprise

    sender = apprise.Apprise()
    if not sender.add(url):
        return redact_url(url)
    return str(sender[0].url(privacy=True)).partition("?")[0]


def not_understood(urls: Sequence[str]) -> list[str]:
    """The URLs (redacted) Apprise cannot send to: an unknown scheme, a required part missing."""
    import apprise

    return [redact_url(url) for url in urls if not apprise.Apprise().add(url)]


class Sender:
    """Delivers queued messages to every URL, each retried with backoff; `run` is the delivering task."""

    def __init__(self, urls: Sequence[str], *, attempts: int = ATTEMPTS, timeout: float = ATTEMPT_TIMEOUT,
                 retry_base: float = 2.0) -> None:
        self.urls = tuple(urls)
        self.health = Delivery()
        self._attempts = attempts
        self._timeout = timeout
        self._retry_base = retry_base
        self._queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_SIZE)

    def post(self, message: Message) -> None:
        """Queue `message` for delivery; returns at once."""
        if not self.urls:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.health.failure(f"dropped ({QUEUE_SIZE} messages were already waiting): {message.title}")
            log.error("notification dropped, %d already waiting: %s", QUEUE_SIZE, message.title)

    async def run(self) -> None:
        """Deliver messages as they come, for ever (cancel it at shutdown)."""
        while True:
            message = await self._queue.get()
            for url in self.urls:
                await self.send(url, message)

    async def send(self, url: str, message: Message) -> str | None:
        """Deliver to one URL, retrying; None when it went, else the last reason (logged and counted)."""
        reason: str | None = None
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(backoff_delay(attempt - 1, base=self._retry_base, cap=60.0))
            try:
                async with asyncio.timeout(self._timeout):
                    reason = await asyncio.to_thread(deliver, url, message)
            except TimeoutError:
                reason = f"no answer within {self._timeout:g} s"
            except Exception as exc:  # an Apprise plugin's bug must not end the delivering task
                reason = f"{type(exc).__name__}: {exc}"
            if reason is None:
                self.health.sent += 1
                return None
        where = label(url)
        self.health.failure(f"{where}: {reason}")
        log.error("notification %r not delivered to %s after %d attempts: %s", message.title, where,
                  self._attempts, reason)
        return reason


async def try_urls(urls: Sequence[str], message: Message) -> dict[str, str | None]:
    """`avatargen notify --test`: each URL (its label) and why it failed, None where the message went."""
    sender = Sender(urls, attempts=1)
    results = await asyncio.gather(*(sender.send(url, message) for url in urls))
    return {label(url): reason for url, reason in zip(urls, results, strict=True)}
