"""A refill run as the owner sees it: what it targets, how far it got, what it cost."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

State = Literal["idle", "booting", "generating", "shutting_down"]
Trigger = Literal["auto", "manual"]
Outcome = Literal["completed", "aborted", "failed"]


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@dataclass
class Step:
    """The SD job's own progress while an image is being made."""

    sampling_step: int = 0
    sampling_steps: int = 0
    progress: float = 0.0


@dataclass
class Run:
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
    done: int = 0
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

    def minutes(self, now: float | None = None) -> list[dict[str, Any]]:
        """The run minute by minute, from its start to its end (or now): the images stored in each minute
        and the spend by the minute's end, for the owner's charts."""
        end = self.ended_at or (time.time() if now is None else now)
        count = int(max(0.0, end - self.started_at) // 60) + 1
        images = self.images_by_minute + [0] * (count - len(self.images_by_minute))
        return [{"images": images[minute], "spend": round(self.cost(min(end, self.started_at + (minute + 1) * 60)), 4)}
                for minute in range(count)]

    def images_per_minute(self, now: float | None = None) -> float:
        if self.generating_since is None or self.done == 0:
            return 0.0
        elapsed = (self.ended_at or (time.time() if now is None else now)) - self.generating_since
        return self.done * 60 / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self, now: float | None = None) -> float | None:
        rate = self.images_per_minute(now)
        if self.outcome is not None:
            return 0.0
        if rate <= 0:
            return None
        return max(0, self.total - self.done - self.failed) * 60 / rate

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        eta = self.eta_seconds(now)
        data: dict[str, Any] = {
            "id": self.id,
            "trigger": self.trigger,
            "state": self.state,
            "started_at": iso(self.started_at),
            "targets": dict(self.targets),
            "done": self.done,
            "failed": self.failed,
            "total": self.total,
            "eta_seconds": None if eta is None else round(eta, 1),
            "images_per_minute": round(self.images_per_minute(now), 2),
            "current_prompt": self.current_prompt,
            "step": None if self.step is None else vars(self.step).copy(),
            "machine_state": self.machine_state,
            "billed_seconds": round(self.billed_seconds(now), 1),
            "cost": round(self.cost(now), 4),
        }
        if self.outcome is not None:
            data.update(outcome=self.outcome, error=self.error, ended_at=iso(self.ended_at))
        return data
