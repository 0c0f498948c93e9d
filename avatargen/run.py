"""A refill run as the generator keeps it: what it targets, how far it got, what it billed.

`Run` is the live, changing record the generator's pieces update; `Run.view()` is its wire form,
`avatargen.api.wire.RunView`, the moment the admin API sends.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from avatargen.api.wire import LastRun, RunMinute, RunView, State, Step, time_json

Trigger = Literal["auto", "manual"]
Outcome = Literal["completed", "aborted", "failed"]


def utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def iso(timestamp: float | None) -> str | None:
    return time_json(utc(timestamp))


@dataclass
class Run:
    """One refill run while the generator makes it: counted, timed and billed as it goes."""

    trigger: Trigger
    targets: dict[str, int]
    hourly_cost: float
    bills: bool = True
    id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3))
    state: State = "booting"
    started_at: float = field(default_factory=time.time)
    billing_since: float | None = None
    billing_until: float | None = None
    generating_since: float | None = None
    done: int = 0  # images published
    held: int = 0  # images the safety gate held back for the owner's review
    failed: int = 0
    current_prompt: str | None = None
    step: Step | None = None
    machine_state: str | None = None
    outcome: Outcome | None = None
    error: str | None = None
    ended_at: float | None = None
    images_by_minute: list[int] = field(default_factory=list)  # images stored in each minute since started_at

    @property
    def total(self) -> int:
        return sum(self.targets.values())

    def billed_seconds(self, now: float | None = None) -> float:
        """Billed seconds up to `now` (default: the present), never past the confirmed stop."""
        if not self.bills or self.billing_since is None:
            return 0.0
        now = time.time() if now is None else now
        end = now if self.billing_until is None else min(now, self.billing_until)
        return max(0.0, end - self.billing_since)

    def cost(self, now: float | None = None) -> float:
        return self.billed_seconds(now) / 3600 * self.hourly_cost

    def stored_image(self, now: float | None = None) -> None:
        """One more image in a bucket, counted in the minute of the run it was stored in."""
        now = time.time() if now is None else now
        minute = int(max(0.0, now - self.started_at) // 60)
        self.images_by_minute.extend([0] * (minute + 1 - len(self.images_by_minute)))
        self.images_by_minute[minute] += 1
        self.done += 1

    def minutes(self, now: float | None = None) -> list[RunMinute]:
        """The run minute by minute, from its start to its end (or now): the images stored in each minute
        and the spend by the minute's end, for the owner's charts."""
        end = self.ended_at or (time.time() if now is None else now)
        count = int(max(0.0, end - self.started_at) // 60) + 1
        images = self.images_by_minute + [0] * (count - len(self.images_by_minute))
        return [RunMinute(images[minute], round(self.cost(min(end, self.started_at + (minute + 1) * 60)), 4))
                for minute in range(count)]

    @property
    def mostly_held(self) -> bool:
        """More than half of the images made were held back by the safety gate: the gate (or the model, or
        the prompts) needs the owner, and more runs would only pay for more images nobody sees."""
        return self.held * 2 > self.done + self.held

    def held_cost(self, now: float | None = None) -> float:
        """The share of the run's cost spent on images the gate held back (each image made costs the same)."""
        made = self.done + self.held
        return self.cost(now) * self.held / made if made else 0.0

    def images_per_minute(self, now: float | None = None) -> float:
        """Images made per minute of generating, published or held back alike (the GPU made both)."""
        made = self.done + self.held
        if self.generating_since is None or made == 0:
            return 0.0
        elapsed = (self.ended_at or (time.time() if now is None else now)) - self.generating_since
        return made * 60 / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self, now: float | None = None) -> float | None:
        rate = self.images_per_minute(now)
        if self.outcome is not None:
            return 0.0
        if rate <= 0:
            return None
        return max(0, self.total - self.done - self.held - self.failed) * 60 / rate

    def view(self, now: float | None = None) -> RunView:
        """The run as the owner sees it now (what status, events and the admin API's answers carry)."""
        now = time.time() if now is None else now
        eta = self.eta_seconds(now)
        return RunView(
            id=self.id,
            trigger=self.trigger,
            state=self.state,
            started_at=datetime.fromtimestamp(self.started_at, UTC),
            targets=dict(self.targets),
            done=self.done,
            failed=self.failed,
            total=self.total,
            eta_seconds=None if eta is None else round(eta, 1),
            images_per_minute=round(self.images_per_minute(now), 2),
            current_prompt=self.current_prompt,
            step=self.step,
            machine_state=self.machine_state,
            billed_seconds=round(self.billed_seconds(now), 1),
            cost=round(self.cost(now), 4),
            held=self.held,
            held_cost=round(self.held_cost(now), 4),
        )

    def ended(self) -> LastRun:
        """The finished run with its outcome, as `last_run` reports it."""
        assert self.outcome is not None, "the run has not ended"
        return LastRun(self.view(), self.outcome, self.error, utc(self.ended_at))

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """The run's JSON: the view, with the outcome once it has ended."""
        return self.ended().to_json() if self.outcome is not None else self.view(now).to_json()
