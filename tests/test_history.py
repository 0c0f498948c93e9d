"""The owner's charts: spend, billed time and images per day from the cost ledger, and a run minute by minute;
through the generator and `GET /admin/api/history`."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest

from avatargen.api import AdminClient, DayTotal, RunMinute
from avatargen.run import Run
from avatargen.storage.files.ledger import CostLedger
from avatargen.storage.spend import DAY, Entry, daily
from tests.support import fast_settings, running_generator, serving
from tests.test_generator_runs import run_to_end

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 12, 10, tzinfo=UTC).timestamp()


def test_each_day_bills_its_part_of_a_run_and_counts_images_on_the_day_it_ended() -> None:
    entries = [
        Entry("across-midnight", MIDNIGHT - 1800, MIDNIGHT + 600, 3.6, images=7),  # 30 min yesterday, 10 today
        Entry("running", NOW - 60, None, 3.6, images=2),  # still going: counts up to now, and today
        Entry("nine-days-ago", MIDNIGHT - 9 * DAY, MIDNIGHT - 9 * DAY + 100, 36.0, images=4),
        Entry("too-old", MIDNIGHT - 40 * DAY, MIDNIGHT - 40 * DAY + 100, 3.6, images=99),
    ]
    days = daily(entries, 10, NOW)
    assert [day.date for day in days][::9] == [date(2026, 12, 1), date(2026, 12, 10)]
    today, yesterday, first = days[-1], days[-2], days[0]
    assert (today.billed_seconds, today.images) == (600 + 60, 7 + 2)
    assert today.cost == pytest.approx(660 / 1000)
    assert (yesterday.billed_seconds, yesterday.images) == (1800, 0)
    assert (first.billed_seconds, first.images, first.cost) == (100, 4, pytest.approx(1.0))
    assert sum(day.images for day in days) == 13 and all(day.billed_seconds == 0 for day in days[1:-2])


def test_a_ledger_from_before_images_were_counted_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE machine_time (run_id TEXT PRIMARY KEY, started REAL NOT NULL, stopped REAL, "
                    "hourly_cost REAL NOT NULL)")
        old.execute("INSERT INTO machine_time VALUES ('old-run', ?, ?, 0.76)", (NOW - 100, NOW - 50))
    old.close()
    for _ in range(2):  # opening it again finds the column there
        ledger = CostLedger(path)
        try:
            assert ledger.entries(0) == [Entry("old-run", NOW - 100, NOW - 50, 0.76, images=0)]
        finally:
            ledger.close_db()
    ledger = CostLedger(path)
    ledger.record([Entry("new-run", NOW - 10, NOW, 0.76, images=3)])
    assert {entry.run_id: entry.images for entry in ledger.entries(0)} == {"old-run": 0, "new-run": 3}
    ledger.close_db()


def test_a_run_minute_by_minute() -> None:
    run = Run(trigger="manual", targets={"unique": 10}, hourly_cost=3600.0, started_at=NOW)
    run.billing_since = NOW + 1
    for second in (70, 75, 130, 170, 175):
        run.stored_image(NOW + second)
    run.billing_until = run.ended_at = NOW + 185
    assert run.done == 5
    assert run.minutes() == [RunMinute(0, 59.0), RunMinute(2, 119.0), RunMinute(3, 179.0), RunMinute(0, 184.0)]


async def test_history_counts_a_run_and_reads_earlier_months_from_the_ledger(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path)
    ledger = CostLedger(settings.server.data_dir / "ledger.sqlite3")
    earlier = time.time() - 35 * DAY  # another month: not among the entries the generator keeps in memory
    ledger.record([Entry("earlier", earlier, earlier + 120, 3600.0, images=5)])
    ledger.close_db()
    async with running_generator(settings) as (generator, _):
        run, _ = await run_to_end(generator, ["unique"])
        history = await generator.history(40)
    assert len(history.days) == 40 and history.days[-1].date == datetime.now(UTC).date()
    today = history.days[-1]
    assert today.images == run["done"] == 4
    assert today.billed_seconds == pytest.approx(run["billed_seconds"], abs=0.2)
    assert today.spend == pytest.approx(run["cost"], abs=0.2)
    assert sum(day.images for day in history.days[:-1]) == 5
    assert sum(day.billed_seconds for day in history.days[:-1]) == pytest.approx(120)
    chart = history.run
    assert chart is not None and chart.id == run["id"] and chart.outcome == "completed"
    assert sum(minute.images for minute in chart.minutes) == 4
    assert chart.minutes[-1].spend == pytest.approx(run["cost"], abs=0.01)
    async with running_generator(settings) as (generator, _):  # the count was written with the run's stop
        assert (await generator.history(1)).days[0].images == 4


async def test_history_route(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, admin__token="t")
    async with serving(settings) as (url, _), httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/admin/api/history")).status_code == 401
        client.headers["Authorization"] = "Bearer t"
        answer = (await client.get("/admin/api/history")).json()
        assert len(answer["days"]) == 30 and answer["run"] is None
        assert answer["days"][-1] == {"date": datetime.now(UTC).date().isoformat(), "billed_seconds": 0,
                                      "spend": 0, "images": 0}
        async with AdminClient(url, "t") as admin:
            history = await admin.history(7)
            assert len(history.days) == 7 and history.days[-1] == DayTotal(datetime.now(UTC).date(), 0, 0, 0)
        for days, problem in (("0", "between 1 and 366"), ("367", "between 1 and 366"), ("a week", "whole number")):
            response = await client.get("/admin/api/history", params={"days": days})
            assert response.status_code == 422 and problem in response.json()["error"]
