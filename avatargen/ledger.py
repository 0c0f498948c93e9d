"""The cost ledger: billed machine time per run, on disk, surviving restarts and crashes.

A run's entry is opened the moment the start request goes out and closed when the stop is confirmed.
An entry left open by a crash is closed by the start-up check that stops the orphaned machine, so the
time the machine ran unattended is billed too. Days and months are UTC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from avatargen import sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS machine_time (
    run_id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    stopped REAL,
    hourly_cost REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Spend:
    today: float
    month: float
    billed_seconds_today: float
    billed_seconds_month: float


class CostLedger:
    def __init__(self, path: Path, hourly_cost: float) -> None:
        self._db = sqlite.connect(path)
        self._db.execute(_SCHEMA)
        self.hourly_cost = hourly_cost

    def open(self, run_id: str, now: float | None = None, hourly_cost: float | None = None) -> None:
        """Billing starts: the start request is about to go out. `hourly_cost` is the machine's own price
        when its provider says it (RunPod does), else the configured one."""
        self._db.execute(
            "INSERT OR REPLACE INTO machine_time (run_id, started, stopped, hourly_cost) VALUES (?, ?, NULL, ?)",
            (run_id, time.time() if now is None else now, self.hourly_cost if hourly_cost is None else hourly_cost),
        )

    def close(self, run_id: str, now: float | None = None) -> float:
        """Billing ends: the stop is confirmed. Returns the entry's billed seconds."""
        now = time.time() if now is None else now
        self._db.execute("UPDATE machine_time SET stopped = ? WHERE run_id = ? AND stopped IS NULL", (now, run_id))
        row = self._db.execute("SELECT stopped - started FROM machine_time WHERE run_id = ?", (run_id,)).fetchone()
        return float(row[0]) if row else 0.0

    def close_open(self, now: float | None = None) -> list[str]:
        """Close every entry a crash left open (the orphaned machine has just been confirmed off)."""
        ids = [row[0] for row in self._db.execute("SELECT run_id FROM machine_time WHERE stopped IS NULL")]
        for run_id in ids:
            self.close(run_id, now)
        return ids

    def billed_seconds(self, run_id: str, now: float | None = None) -> float:
        now = time.time() if now is None else now
        row = self._db.execute(
            "SELECT COALESCE(stopped, ?) - started FROM machine_time WHERE run_id = ?", (now, run_id)
        ).fetchone()
        return max(0.0, float(row[0])) if row else 0.0

    def spend(self, now: float | None = None) -> Spend:
        """Today's and this month's billed time and cost, open entries counted up to now."""
        now = time.time() if now is None else now
        moment = datetime.fromtimestamp(now, UTC)
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        month = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()

        def since(start: float) -> tuple[float, float]:
            # Only the part of each entry inside the period counts.
            row = self._db.execute(
                "SELECT COALESCE(SUM(MAX(0, COALESCE(stopped, :now) - MAX(started, :start))), 0),"
                " COALESCE(SUM(MAX(0, COALESCE(stopped, :now) - MAX(started, :start)) * hourly_cost), 0)"
                " FROM machine_time WHERE COALESCE(stopped, :now) > :start",
                {"now": now, "start": start},
            ).fetchone()
            return float(row[0]), float(row[1]) / 3600

        seconds_today, cost_today = since(day)
        seconds_month, cost_month = since(month)
        return Spend(cost_today, cost_month, seconds_today, seconds_month)

    def close_db(self) -> None:
        self._db.close()
