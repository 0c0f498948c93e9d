"""One series as a labelled sparkline: what it measures, its bars, and the figure that sums it up."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Label, Sparkline, Static


class Chart(Widget):
    """`images/min ▁▃▆█▇▆ peak 6`: Textual's Sparkline between a label and a summary.

    One cell per value (a day, a minute) while they fit; beyond the room the stylesheet gives the bars
    (their max-width), each cell sums up a stretch with its highest value. Bars go from the series' lowest
    value to its highest, so the summary says the figure that matters (a peak, a total)."""

    def __init__(self, label: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="chart-label")
        yield Sparkline([], classes="chart-bars")
        yield Static(classes="chart-summary")

    def plot(self, values: Sequence[float], summary: str) -> None:
        bars = self.query_one(Sparkline)
        bars.data = list(values)
        bars.styles.width = max(1, len(values))
        self.query_one(".chart-summary", Static).update(summary)
