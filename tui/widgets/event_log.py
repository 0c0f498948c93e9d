"""The live log: what the server and the panel itself report, newest at the bottom.

A RichLog draws lines at the width they were written for, and a log in a hidden tab (or one written
before the terminal was measured) does not know its width yet. So the log keeps its entries and draws
them again whenever its width changes: every line fills the width it has, and no character is ever
past the edge. A message that wraps continues under the message, not under the time.

Entries are kept in time order: the server's recent log, which it sends to a panel that connects,
comes after the panel's own "connected" line but belongs before it.
"""

from __future__ import annotations

import bisect

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

from avatargen.api import LogEntry
from tui.formatting import clock

MAX_ENTRIES = 2000
LEVEL_WIDTH = len("critical")
LEVEL_CLASSES = {"debug": "event-log--debug", "info": "event-log--info", "warning": "event-log--warning",
                 "error": "event-log--error", "critical": "event-log--error"}


class EventLog(RichLog):
    """`14:03:12 warning  aborting run …`: time, level and message in columns, the message wrapped."""

    COMPONENT_CLASSES = {"event-log--time", *LEVEL_CLASSES.values()}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        # The lines drawn are bounded too: a wrapped entry takes several.
        super().__init__(id=id, classes=classes, max_lines=4 * MAX_ENTRIES, wrap=True, markup=False, highlight=False)
        self.entries: list[LogEntry] = []  # oldest first, at most MAX_ENTRIES
        self._width = 0  # the width the lines are drawn for; 0 until the log is first shown
        self._redraw_due = False

    def add(self, entry: LogEntry) -> None:
        if self.entries and entry.time < self.entries[-1].time:
            bisect.insort(self.entries, entry, key=lambda known: known.time)
            if not self._redraw_due:  # a replay brings many at once: draw them all once
                self._redraw_due = True
                self.call_after_refresh(self._redraw)
        else:
            self.entries.append(entry)
            if self._width and not self._redraw_due:
                self.write(self._draw(entry), width=self._width)
        del self.entries[:-MAX_ENTRIES]

    def on_resize(self, event: Resize) -> None:
        width = self.scrollable_content_region.width
        if width and width != self._width:
            self._width = width
            self._redraw()

    def _redraw(self) -> None:
        self._redraw_due = False
        self.clear()
        if self._width:
            for entry in self.entries:
                self.write(self._draw(entry), width=self._width)

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
