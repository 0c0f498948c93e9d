"""What the owner sees of the generator: the pieces of the status document and of its live events.

The status and the `state` events share one view of the state and the runs, so the TUI's picture is the
same whether it polled or listened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from avatargen.buckets import Bucket, ImageRecord
from avatargen.config import Settings
from avatargen.generator.states import States
from avatargen.ledger import Spend


def bucket_levels(settings: Settings, buckets: Mapping[str, Bucket]) -> dict[str, dict[str, int]]:
    """Each bucket's count against its min and max, as status and events report them."""
    return {name: {"count": buckets[name].count(), "min": conf.min, "max": conf.max}
            for name, conf in settings.buckets.items()}


def cost_summary(settings: Settings, spend: Spend, ledger_problem: str | None = None) -> dict[str, Any]:
    """Today's and this month's spend; `ledger_problem` says why the ledger on disk may lag behind it."""
    return {
        "today": round(spend.today, 4),
        "month": round(spend.month, 4),
        "daily_budget": settings.gpu.daily_budget,
        "hourly_cost": settings.gpu.hourly_cost,
        "billed_seconds_today": round(spend.billed_seconds_today, 1),
        "billed_seconds_month": round(spend.billed_seconds_month, 1),
        "ledger_problem": ledger_problem,
    }


def runs_view(states: States) -> dict[str, Any]:
    """The state and the runs, as both the status and `state` events report them."""
    return {
        "state": states.state,
        "run": states.run.to_dict() if states.run else None,
        "last_run": states.last_run.to_dict() if states.last_run else None,
    }


def image_event(bucket_name: str, record: ImageRecord, levels: dict[str, dict[str, int]]) -> dict[str, Any]:
    """A freshly stored image, with the bucket levels it leaves behind."""
    return {
        "id": record.id,
        "bucket": bucket_name,
        "prompt": record.metadata.get("prompt"),
        "created_at": record.metadata.get("created_at"),
        "url": f"/admin/api/images/{bucket_name}/{record.id}",
        "metadata": record.metadata,
        "buckets": levels,
    }
