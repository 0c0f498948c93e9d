"""How the previous run ended, and why when it failed: the first thing to look at after a bad night."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from avatargen.api import LastRun, money
from avatargen.durations import format_duration
from tui.formatting import clock


class LastRunSummary(Widget):
    """`last run 7f3a (manual) completed at 14:03:12 · 40/40 done · GPU 1m 40s, 0.021`, then any error."""

    COMPONENT_CLASSES = {"last-run--completed", "last-run--aborted", "last-run--failed", "last-run--error"}

    last_run: reactive[LastRun | None] = reactive(None, layout=True)  # its lines may wrap: height follows

    def render(self) -> Text:
        last = self.last_run
        if last is None:
            return Text("no run yet", "dim")
        run = last.run
        ended = f" at {clock(last.ended_at)}" if last.ended_at is not None else ""
        failed = f", {run.failed} failed" if run.failed else ""
        held = f", {run.held} held ({money(run.held_cost)})" if run.held else ""
        outcome_style = f"last-run--{last.outcome}"
        style = self.get_component_rich_style(outcome_style) if outcome_style in self.COMPONENT_CLASSES else ""
        line = Text.assemble(
            f"last run {run.id} ({run.trigger}) ",
            (last.outcome, style),
            f"{ended} · {run.done}/{run.total} done{held}{failed}"
            f" · GPU {format_duration(run.billed_seconds)}, {money(run.cost)}",
        )
        if last.error:
            return Text("\n").join([line, Text(last.error, self.get_component_rich_style("last-run--error"))])
        return line
