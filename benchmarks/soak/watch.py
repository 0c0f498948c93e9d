"""The money, watched: the admin status and the simulator's bill, sampled together a few times a second.

Each sample reads the status, then the simulator's machine (state, billed seconds), then the status again.
Between two samples, the machine's billed seconds grew inside a run unless both statuses around them say
idle with the same last run (a run that started and ended in between changes it): billed seconds in such an
interval are billed outside any run, and a machine not off in it is a machine on while no run is. Where no
process answers as the generator (restarts, a replica killed before the other takes over) an interval is
not judged: what was billed then is counted apart. An automatic run must never start once the day's spend
reached the budget, and the day's spend (the highest seen is kept) must never go over it: a run under way
stops in time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from benchmarks.soak.setups import Setup

OFF_STATES = ("off", "terminated")
SAMPLE_EVERY = 0.25
BUDGET_SLACK = 0.001  # the status rounds the spend to 4 decimals


@dataclass(frozen=True)
class Look:
    """What one status said, as far as the soak needs it."""

    at: float
    state: str
    generator: bool  # False: the answering process knew no generator (machine_state null)
    run_id: str | None
    run_trigger: str | None
    run_started: float | None
    last_run_id: str | None
    today: float
    billed_month: float
    budget: float
    trouble: frozenset[str]


def trouble(status: dict[str, Any]) -> frozenset[str]:
    """What in a status tells the owner something is wrong: a run that failed or is failing images, a pause,
    notes about the machine, a ledger problem, visitors' errors, no generator."""
    signs = set()
    last, run = status.get("last_run"), status.get("run")
    if last and last.get("outcome") != "completed":
        signs.add(f"last run {last.get('id')} {last.get('outcome')}: {(last.get('error') or '')[:80]}")
    if run and run.get("failed"):
        signs.add(f"run {run.get('id')}: {run['failed']} images failed")
    if status.get("paused_reason"):
        signs.add(f"paused: {status['paused_reason']}")
    signs.update(f"machine note: {note}" for note in (status.get("gpu") or {}).get("notes") or ())
    cost = status.get("cost") or {}
    if cost.get("ledger_problem"):
        signs.add(f"ledger: {cost['ledger_problem']}")
    visitors = (status.get("visitors") or {}).get("errors") or 0
    if visitors:
        signs.add(f"visitor errors: {visitors}")
    if (status.get("gpu") or {}).get("machine_state") is None:
        signs.add("no generator answers")
    return frozenset(signs)


def _epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def look(status: dict[str, Any], at: float) -> Look:
    run, last, cost = status.get("run") or {}, status.get("last_run") or {}, status.get("cost") or {}
    return Look(at, status.get("state", "?"), (status.get("gpu") or {}).get("machine_state") is not None,
                run.get("id"), run.get("trigger"), _epoch(run.get("started_at")), last.get("id"),
                float(cost.get("today") or 0), float(cost.get("billed_seconds_month") or 0),
                float(cost.get("daily_budget") or 0), trouble(status))


@dataclass
class Money:
    """The invariants of the bill, added up as the samples come."""

    billed_outside_runs: float = 0.0
    machine_on_without_run: int = 0  # judged intervals with the machine not off
    billed_unjudged: float = 0.0  # billed while no generator answered (a takeover, a restart)
    auto_runs_over_budget: list[str] = field(default_factory=list)
    runs_seen: set[str] = field(default_factory=set)
    highest_day_share: float = 0.0  # the highest day's spend, as a share of the budget
    highest_day_at: float | None = None  # when it was seen (to find the fault that was on)
    midnights: int = 0  # day changes seen where the day's spend started again from 0
    machine_billed: float = 0.0  # the simulator's billed seconds at the last sample
    ledger_billed: float = 0.0  # the ledger's billed seconds this month, at the last sample
    # Seconds between the two status reads around each read of the machine: the round trips the ledger's
    # start and end are late by, as slow as the machine under the soak is loaded.
    brackets: list[float] = field(default_factory=list)


class Watch:
    """A thread sampling one setup until `stop` is set; `looks` (every status read) and `money`."""

    def __init__(self, setup: Setup, stop: threading.Event, day_seconds: float) -> None:
        self.setup = setup
        self.stop = stop
        self.day_seconds = day_seconds
        self.looks: list[Look] = []
        self.unreachable: list[float] = []  # when no slot answered the status
        self.money = Money()
        self.lock = threading.Lock()
        self._last: Look | None = None  # the last look from the generator
        self._last_idle: Look | None = None  # the last such look with no run
        self.thread = threading.Thread(target=self._loop, name=f"watch {setup.name}", daemon=True)

    def _status(self, client: httpx.Client) -> Look | None:
        answer = self.setup.status(client)
        now = time.time()
        if answer is None:
            with self.lock:
                self.unreachable.append(now)
            return None
        seen = look(answer[0], now)
        with self.lock:
            self.looks.append(seen)
        return seen

    def _loop(self) -> None:
        previous: tuple[Look | None, dict[str, Any]] | None = None
        with httpx.Client() as client:
            while not self.stop.wait(SAMPLE_EVERY):
                before = self._status(client)
                try:
                    machine = self.setup.simulator.machine()
                except httpx.HTTPError:
                    previous = None
                    continue
                after = self._status(client)
                if before is not None and after is not None:
                    self.money.brackets.append(after.at - before.at)
                if before is not None:
                    self._check_run_start(before)
                if previous is not None:
                    self._judge(previous, machine, after)
                previous = (before, machine)
                self.money.machine_billed = float(machine["billedSeconds"])
                if after is not None:
                    self.money.ledger_billed = after.billed_month

    def _judge(self, previous: tuple[Look | None, dict[str, Any]], machine: dict[str, Any],
               after: Look | None) -> None:
        before, earlier = previous
        billed = float(machine["billedSeconds"]) - float(earlier["billedSeconds"])
        judged = (before is not None and after is not None and before.generator and after.generator
                  and before.state == after.state == "idle" and before.last_run_id == after.last_run_id)
        if not judged:
            self.money.billed_unjudged += billed if before is None or after is None or not (
                before.generator and after.generator) else 0.0
            return
        self.money.billed_outside_runs += billed
        if earlier["state"] not in OFF_STATES or machine["state"] not in OFF_STATES:
            self.money.machine_on_without_run += 1

    def _day(self, at: float) -> int:
        return int(at // self.day_seconds)

    def _check_run_start(self, seen: Look) -> None:
        """Midnights, the day's highest spend, and a new automatic run against the last idle look before it."""
        if not seen.generator:
            return
        last, self._last = self._last, seen
        if last is not None and self._day(last.at) != self._day(seen.at) and seen.today < last.today:
            self.money.midnights += 1
        if seen.budget and seen.today / seen.budget > self.money.highest_day_share:
            self.money.highest_day_share, self.money.highest_day_at = seen.today / seen.budget, seen.at
        if seen.run_id is None:
            self._last_idle = seen
            return
        if seen.run_id in self.money.runs_seen:
            return
        self.money.runs_seen.add(seen.run_id)
        idle = self._last_idle
        if seen.run_trigger != "auto" or seen.run_started is None or idle is None or idle.at >= seen.run_started:
            return
        if self._day(idle.at) == self._day(seen.run_started) and idle.today >= idle.budget + BUDGET_SLACK:
            self.money.auto_runs_over_budget.append(
                f"{seen.run_id} started with {idle.today:.2f} of {idle.budget:.2f} spent")
