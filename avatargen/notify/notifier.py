"""Which of the owner's events become messages, and how often: `[notify] events` and `min_interval`."""

from __future__ import annotations

import logging
import time

from avatargen.config import NotifySettings
from avatargen.durations import format_duration
from avatargen.notify.sender import Message, Sender

log = logging.getLogger("avatargen.notify")

NEVER_HELD_BACK = frozenset({"money"})  # a machine that may be billing, a spent budget: every time


class Notifier:
    """Filters events by kind, holds back a kind sent less than min_interval ago (not "money"), and posts
    the rest to the sender, which delivers them off the event loop."""

    def __init__(self, settings: NotifySettings, sender: Sender) -> None:
        self.settings = settings
        self.sender = sender
        self._last_sent: dict[str, float] = {}

    def notify(self, kind: str, title: str, body: str) -> bool:
        """Send `title`/`body` as an event of `kind` unless filtered or held back; whether it was queued."""
        if kind not in self.settings.events or not self.sender.urls:
            return False
        now = time.monotonic()
        last = self._last_sent.get(kind)
        if kind not in NEVER_HELD_BACK and last is not None and now - last < self.settings.min_interval:
            log.info("notification held back (a %s message went out %s ago): %s", kind,
                     format_duration(now - last), title)
            return False
        self._last_sent[kind] = now
        log.info("notifying the owner: %s", title)
        self.sender.post(Message(kind, title, body))
        return True
