"""What the GPU costs: today's and this month's spend against the daily budget, the machine, the next check."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from avatargen.api import Status
from avatargen.durations import format_duration
from tui.formatting import money

BUDGET_BAR = 10


class SpendSummary(Widget):
    """Three lines: spend against budget, billed GPU time and the machine, when automatic runs happen."""

    COMPONENT_CLASSES = {"spend--used", "spend--left", "spend--over", "spend--paused"}

    status: reactive[Status | None] = reactive(None)

    def on_mount(self) -> None:
        # "next check in ..." is relative: keep it true as time passes.
        self.auto_refresh = 1.0

    def render(self) -> Text:
        status = self.status
        if status is None:
            return Text("waiting for the server", "dim")
        cost = status.cost
        share = cost.today / cost.daily_budget if cost.daily_budget > 0 else 1.0
        used = min(BUDGET_BAR, round(BUDGET_BAR * share))
        over = share >= 1
        spend = Text.assemble(
            "today ",
            ("█" * used, self.get_component_rich_style("spend--over" if over else "spend--used")),
            ("░" * (BUDGET_BAR - used), self.get_component_rich_style("spend--left")),
            f" {money(cost.today)} of {money(cost.daily_budget)} budget · month {money(cost.month)}",
        )
        machine = Text(
            f"GPU today {format_duration(cost.billed_seconds_today)}, month "
            f"{format_duration(cost.billed_seconds_month)} · machine {status.machine_state or 'unknown'}"
            f" ({status.provider})"
        )
        return Text("\n").join([spend, machine, self._schedule(status)])

    def _schedule(self, status: Status) -> Text:
        if status.paused_reason:
            paused = self.get_component_rich_style("spend--paused")
            return Text(f"automatic runs paused: {status.paused_reason}", paused)
        if status.next_check_at is None:
            return Text("no automatic check scheduled", "dim")
        wait = (status.next_check_at - datetime.now(UTC)).total_seconds()
        return Text(f"next automatic check in {format_duration(wait)}", "dim")
