"""How the GPU money goes: the run minute by minute, and the last days, as sparklines.

The run (the one under way, else the last) shows images per minute, where the boot's idle minutes stand
out, and its spend climbing; the days show what each day cost and made, from the server's cost ledger.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

from avatargen.api import History, money
from tui.widgets.chart import Chart


class HistoryCharts(Widget):
    """Four charts under two titles: this run's images/min and spend, the days' images and spend."""

    history: reactive[History | None] = reactive(None, init=False)

    def compose(self) -> ComposeResult:
        yield Static(Text("no run yet", "dim"), id="run-chart-title", classes="chart-title")
        yield Chart("images/min", id="run-images")
        yield Chart("spend", id="run-spend")
        yield Static(id="days-chart-title", classes="chart-title")
        yield Chart("images/day", id="day-images")
        yield Chart("spend/day", id="day-spend")

    def on_mount(self) -> None:
        self.watch_history(self.history)

    def watch_history(self, history: History | None) -> None:
        if history is None:
            return
        run = history.run
        if run is not None:
            going = "this run" if run.outcome is None else f"last run ({run.outcome})"
            minutes = len(run.minutes)
            self.query_one("#run-chart-title", Static).update(
                Text(f"{going} {run.id} · {minutes} minute{'s' if minutes != 1 else ''}, one bar each"))
            images = [minute.images for minute in run.minutes]
            self.query_one("#run-images", Chart).plot(images, f"peak {max(images, default=0)}")
            spend = [minute.spend for minute in run.minutes]
            self.query_one("#run-spend", Chart).plot(spend, f"now {money(spend[-1] if spend else 0.0)}")
        self.set_class(run is None, "-no-run")
        days = history.days
        self.query_one("#days-chart-title", Static).update(Text(f"last {len(days)} days, one bar each"))
        made = [day.images for day in days]
        self.query_one("#day-images", Chart).plot(made, f"total {sum(made)}")
        spent = [day.spend for day in days]
        self.query_one("#day-spend", Chart).plot(spent, f"total {money(sum(spent))}")
