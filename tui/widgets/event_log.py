"""The live log: what the server and the panel itself report, newest at the bottom."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from avatargen.api import LogEntry
from tui.formatting import clock

LEVEL_STYLES = {"debug": "dim", "warning": "yellow", "error": "bold red", "critical": "bold red"}


class EventLog(RichLog):
    """A RichLog of `LogEntry`s, one line each: time, level, message."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, max_lines=2000, wrap=True, markup=False, highlight=False)

    def add(self, entry: LogEntry) -> None:
        level = entry.level.lower()
        self.write(
            Text.assemble((clock(entry.time), "dim"), " ", (f"{level:<7}", LEVEL_STYLES.get(level, "")), entry.message)
        )
