"""Billed machine time as the generator records it: in memory at once, in the ledger file behind.

The run's state machine never waits on the disk. Another process holding a lock on the ledger, a slow or
full disk would otherwise freeze the event loop that serves visitors, or strand a run half-way through
its shutdown with the generator `shutting_down` for good. So each change is made in memory, where the
status and the daily budget read it, and a writer task copies it to the ledger from a worker thread,
retrying with backoff until it lands. The owner sees a ledger that cannot be written in the log and in
the status (`cost.ledger_problem`) until it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from avatargen.durations import format_duration
from avatargen.ledger import CostLedger, Entry, Spend, month_start
from avatargen.retry import backoff_delay
from avatargen.run import iso

log = logging.getLogger("avatargen.generator")

RETRY_MAX = 10.0  # longest wait between two attempts to write the ledger


class Billing:
    def __init__(self, ledger: CostLedger, hourly_cost: float) -> None:
        self.ledger = ledger
        self.hourly_cost = hourly_cost
        self.problem: str | None = None
        self._entries: dict[str, Entry] = {}
        self._unwritten: dict[str, Entry] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """This month's entries and any left open, from the ledger; then write behind from now on."""
        entries = await asyncio.to_thread(self.ledger.entries, month_start(time.time()))
        self._entries = {entry.run_id: entry for entry in entries}
        self._writer = asyncio.create_task(self._write_behind(), name="ledger-writer")

    def start(self, run_id: str, when: float) -> None:
        """Billing starts: the start request is about to go out."""
        self._set(Entry(run_id, when, None, self.hourly_cost))

    def stop(self, run_id: str, when: float) -> None:
        """Billing ends: the stop is confirmed."""
        entry = self._entries.get(run_id)
        if entry is not None and entry.stopped is None:
            self._set(replace(entry, stopped=when))

    def close_open(self, when: float) -> list[str]:
        """Close every entry a crash left open (the orphaned machine has just been confirmed off)."""
        ids = [entry.run_id for entry in self._entries.values() if entry.stopped is None]
        for run_id in ids:
            self.stop(run_id, when)
        return ids

    def spend(self, now: float | None = None) -> Spend:
        return Spend.of(self._entries.values(), now)

    async def aclose(self) -> None:
        """One last attempt to write what is unwritten; what still is not is logged, for the owner to add."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        for entry in self._unwritten.values():
            billed = format_duration(entry.seconds_since(entry.started, time.time()))
            log.error("billed time of run %s (%s, from %s to %s) could not be written to the cost ledger %s",
                      entry.run_id, billed, iso(entry.started), iso(entry.stopped) or "now", self.ledger.path)

    def _set(self, entry: Entry) -> None:
        self._entries[entry.run_id] = self._unwritten[entry.run_id] = entry
        self._wake.set()

    async def _write_behind(self) -> None:
        failures = 0
        while True:
            if not self._closing:
                wait = backoff_delay(failures - 1, base=0.5, cap=RETRY_MAX) if failures else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                self._wake.clear()
            batch = list(self._unwritten.values())
            if batch:
                try:
                    await asyncio.to_thread(self.ledger.record, batch)
                except Exception as exc:  # whatever the disk says, the run goes on; the record waits here
                    failures += 1
                    problem = f"the cost ledger cannot be written ({exc}); billed time is kept in memory until it can"
                    if problem != self.problem:
                        log.error("%s: %s", self.ledger.path, problem)
                    self.problem = problem
                    if self._closing:
                        return
                    continue
                for entry in batch:
                    if self._unwritten.get(entry.run_id) is entry:
                        del self._unwritten[entry.run_id]
                if failures:
                    log.warning("the cost ledger %s is written again: %d billing record(s) caught up",
                                self.ledger.path, len(batch))
                    failures, self.problem = 0, None
            if self._closing and not self._unwritten:
                return

