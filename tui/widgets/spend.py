"""What the GPU costs: today's and this month's spend against the daily budget, the machine and its hourly
rate, the next check; below them what the owner should act on (a machine's notes, visitors' errors)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from avatargen.api import Status, money
from avatargen.durations import format_duration
from tui.formatting import timestamp

BUDGET_BAR = 10
ASK_EVERY = 5.0  # seconds between asks for a newer status while a check is overdue


def endpoint_line(endpoint: Mapping[str, Any]) -> Text:
    """A serverless endpoint's workers and queue as its `/health` last said, our jobs out, and the reminder that
    its cost is an estimate."""
    health = endpoint.get("health") or {}
    workers = (f"workers {health.get('workers_idle', 0)} idle, {health.get('workers_running', 0)} running, "
               f"{health.get('workers_initializing', 0)} starting · {health.get('jobs_in_queue', 0)} jobs in queue"
               if health else "health not known yet")
    return Text(f"{workers} · ours {endpoint.get('jobs_in_flight', 0)} of max {endpoint.get('max_in_flight', '?')}"
                " · cost estimated from worker time", "dim")


class SpendSummary(Widget):
    """Three lines: spend against budget, billed GPU time and the machine (a serverless endpoint adds a line:
    its workers and queue), when automatic runs happen; then a
    line for each of the machine's notes (a backstop off, storage a stopped pod pays for) and for visitors
    who got another avatar because something failed."""

    COMPONENT_CLASSES = {"spend--used", "spend--left", "spend--over", "spend--paused", "spend--warning"}

    status: reactive[Status | None] = reactive(None, layout=True)  # lines come and go: height follows

    class CheckDue(Message):
        """The next automatic check's time has passed. A check that starts no run sends no event, so only a
        fresh status tells when the one after it is."""

    def on_mount(self) -> None:
        self._asked = 0.0  # time.monotonic() of the last CheckDue
        # "next check in ..." is relative: keep it true as time passes.
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        self.refresh()
        status = self.status
        if status is None or status.paused_reason or status.next_check_at is None:
            return
        overdue = datetime.now(UTC) > status.next_check_at
        if overdue and time.monotonic() - self._asked >= ASK_EVERY:
            self._asked = time.monotonic()
            self.post_message(self.CheckDue())

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
        source = f"{status.provider}'s price" if cost.rate_source == "provider" else "gpu.hourly_cost"
        rate = "" if cost.hourly_rate is None else f" · {money(cost.hourly_rate)}/h ({source})"
        what = "endpoint" if status.endpoint is not None else "machine"
        machine = Text(
            f"GPU today {format_duration(cost.billed_seconds_today)}, month "
            f"{format_duration(cost.billed_seconds_month)} · {what} {status.machine_state or 'unknown'}"
            f" ({status.provider}){rate}"
        )
        endpoint = [] if status.endpoint is None else [endpoint_line(status.endpoint)]
        return Text("\n").join([spend, machine, *endpoint, self._schedule(status), *self._warnings(status)])

    def _warnings(self, status: Status) -> list[Text]:
        warning = self.get_component_rich_style("spend--warning")
        lines = [Text(f"⚠ {note}", warning) for note in status.machine_notes]
        visitors = status.visitors
        if visitors.errors and visitors.last_error_at is not None:
            lines.append(Text(f"⚠ {visitors.errors} visitors got another avatar after an error; last "
                              f"{timestamp(visitors.last_error_at)}: {visitors.last_error}", warning))
        return lines

    def _schedule(self, status: Status) -> Text:
        if status.paused_reason:
            paused = self.get_component_rich_style("spend--paused")
            return Text(f"automatic runs paused: {status.paused_reason}", paused)
        if status.next_check_at is None:
            return Text("no automatic check scheduled", "dim")
        wait = (status.next_check_at - datetime.now(UTC)).total_seconds()
        if wait < 1:
            return Text("automatic check due now", "dim")
        return Text(f"next automatic check in {format_duration(wait)}", "dim")
