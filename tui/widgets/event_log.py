"""The live log: what the server and the panel itself report, newest at the bottom.

A RichLog draws lines at the width they were written for, and a log in a hidden tab (or one written
before the terminal was measured) does not know its width yet. So the log keeps its entries and draws
them again whenever its width changes: every line fills the width it has, and no character is ever
past the edge. A message that wraps continues under the message, not under the time.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

from tui.formatting import clock
from tui.models import LogEntry

MAX_ENTRIES = 2000
LEVEL_WIDTH = len("critical")
LEVEL_CLASSES = {"debug": "event-log--debug", "info": "event-log--info", "warning": "event-log--warning",
                 "error": "event-log--error", "critical": "event-log--error"}


class EventLog(RichLog):
    """`14:03:12 warning  aborting run …`: time, level and message in columns, the message wrapped."""

    COMPONENT_CLASSES = {"event-log--time", *LEVEL_CLASSES.values()}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, wrap=True, markup=False, highlight=False)
        self.entries: deque[LogEntry] = deque(maxlen=MAX_ENTRIES)
        self._width = 0  # the width the lines are drawn for; 0 until the log is first shown

    def add(self, entry: LogEntry) -> None:
        self.entries.append(entry)
        if self._width:
            self.write(self._draw(entry), width=self._width)

    def on_resize(self, event: Resize) -> None:
        width = self.scrollable_content_region.width
        if width and width != self._width:
            self._width = width
            self.clear()
            for entry in self.entries:
                self.write(self._draw(entry), width=width)

    def _draw(self, entry: LogEntry) -> Text:
        """The entry's lines at the log's width: time and level once, the message wrapped beside them."""
        level = entry.level.lower()
        head = Text.assemble(
            (clock(entry.time), self.get_component_rich_style("event-log--time")), " ",
            (f"{level:<{LEVEL_WIDTH}}", self.get_component_rich_style(LEVEL_CLASSES.get(level, "event-log--info"))),
            " ",
        )
        lines = Text(entry.message).wrap(self.app.console, max(1, self._width - head.cell_len), overflow="fold")
        indent = " " * head.cell_len
        return Text("\n").join(Text.assemble(head if number == 0 else indent, line)
                               for number, line in enumerate(lines))
