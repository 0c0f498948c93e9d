"""What the owner sees of the generator: the pieces of the status document and of its live events, as
the admin API's wire types (`avatargen.api.wire`), which encode them.

The status and the `state` events share one view of the state and the runs, so the TUI's picture is the
same whether it polled or listened. The core builds no URL: an image event names its bucket and id, and
the server (or the client) knows where the admin API serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from avatargen.api.wire import BucketLevel, Cost, DayTotal, History, ImageInfo, RunChart, StateChange
from avatargen.config import Settings
from avatargen.generator.states import States
from avatargen.gpu.base import HourlyRate
from avatargen.run import Run
from avatargen.storage.models import ImageRecord
from avatargen.storage.protocols import StoredBucket
from avatargen.storage.spend import Day, Spend


def bucket_levels(settings: Settings, buckets: Mapping[str, StoredBucket]) -> dict[str, BucketLevel]:
    """Each bucket's count against its min and max, its images held for review and those set aside as broken,
    as status and events report them; and why the count cannot be trusted, while the store cannot be read."""
    return {name: BucketLevel(buckets[name].count(), conf.min, conf.max, buckets[name].held_count(),
                              buckets[name].rejected(), buckets[name].unknown())
            for name, conf in settings.buckets.items()}


def cost_summary(settings: Settings, spend: Spend, ledger_problem: str | None = None,
                 rate: HourlyRate | None = None) -> Cost:
    """Today's and this month's spend; `ledger_problem` says why the ledger on disk may lag behind it; `rate`
    is what runs are billed at and where it comes from ("provider": the machine's own price from its API,
    "config": gpu.hourly_cost, also when no provider is at hand)."""
    rate = rate or HourlyRate(settings.gpu.hourly_cost, "config")
    return Cost(
        today=round(spend.today, 4),
        month=round(spend.month, 4),
        daily_budget=settings.gpu.daily_budget,
        hourly_cost=settings.gpu.hourly_cost,
        hourly_rate=rate.amount,
        rate_source=rate.source,
        billed_seconds_today=round(spend.billed_seconds_today, 1),
        billed_seconds_month=round(spend.billed_seconds_month, 1),
        ledger_problem=ledger_problem,
    )


def state_change(states: States, machine_state: str | None) -> StateChange:
    """The state and the runs, as both the status and `state` events report them."""
    return StateChange(states.state, states.run.view() if states.run else None,
                       states.last_run.ended() if states.last_run else None, machine_state)


def image_info(record: ImageRecord) -> ImageInfo:
    """A stored or held image as the owner sees it."""
    return ImageInfo.of(record.id, record.bucket, record.metadata, record.created_at, kept=record.kept,
                        held=record.held)


def history_view(days: list[Day], run: Run | None) -> History:
    """The owner's charts: spend, billed time and images per day, and a run (the one under way, else the
    last) minute by minute."""
    return History(
        [DayTotal(day.date, round(day.billed_seconds, 1), round(day.cost, 4), day.images) for day in days],
        None if run is None else RunChart(run.id, datetime.fromtimestamp(run.started_at, UTC), run.outcome,
                                          run.minutes()),
    )
