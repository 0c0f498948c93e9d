"""What the background workers tell the UI.

Workers never touch widgets: they post one of these to the App (`post_message` is safe from any task
or thread), and the App's handlers update the screen. Each message is one fact, named for what happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.message import Message

from avatargen.api import AdminError, History, ServerEvent, Status
from tui.images import Picture


class Connected(Message):
    """The event stream is open and this is the server's current status."""

    def __init__(self, status: Status) -> None:
        super().__init__()
        self.status = status


class Disconnected(Message):
    """The server could not be reached or went away; the next attempt is `retry_in` seconds away."""

    def __init__(self, reason: str, retry_in: float, attempt: int) -> None:
        super().__init__()
        self.reason = reason
        self.retry_in = retry_in
        self.attempt = attempt


class Refused(Message):
    """The server refused the token or this address (401/403); nothing is retried until the owner asks."""

    def __init__(self, error: AdminError) -> None:
        super().__init__()
        self.error = error


class Received(Message):
    """A live event from the server."""

    def __init__(self, event: ServerEvent) -> None:
        super().__init__()
        self.event = event


class StatusFetched(Message):
    """A fresh status, fetched after a state change for what events do not carry (spend, machine).
    `events_before`: how many events the panel had received when the fetch began."""

    def __init__(self, status: Status, events_before: int) -> None:
        super().__init__()
        self.status = status
        self.events_before = events_before


class HistoryLoaded(Message):
    """The server's history: the days' spend and images, and a run by the minute."""

    def __init__(self, history: History) -> None:
        super().__init__()
        self.history = history


class PicturesLoaded(Message):
    """The newest images of all buckets, newest first: the thumbnail grid starts over from these."""

    def __init__(self, pictures: list[Picture]) -> None:
        super().__init__()
        self.pictures = pictures


class PicturesArrived(Message):
    """Newly generated images, downloaded and decoded (a burst of arrivals comes as one batch)."""

    def __init__(self, pictures: list[Picture]) -> None:
        super().__init__()
        self.pictures = pictures


class PromptsLoaded(Message):
    """The server's [prompts] settings (after loading or saving them)."""

    def __init__(self, settings: Mapping[str, Any], *, saved: bool) -> None:
        super().__init__()
        self.settings = settings
        self.saved = saved


class SamplesComposed(Message):
    """Sample prompts for the settings being edited."""

    def __init__(self, prompts: list[str]) -> None:
        super().__init__()
        self.prompts = prompts


class PromptsRejected(Message):
    """The server rejected edited prompt settings; `error.field` names the setting."""

    def __init__(self, error: AdminError) -> None:
        super().__init__()
        self.error = error


class Failed(Message):
    """A background load failed (the log says so; the connection status tells the bigger story)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class Answered(Message):
    """The outcome of an owner's action (refill, abort, save), in words for the log and a notification."""

    def __init__(self, text: str, *, ok: bool) -> None:
        super().__init__()
        self.text = text
        self.ok = ok
