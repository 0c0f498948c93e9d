"""Billed machine time as the generator records it: in memory at once, in the ledger file behind.

The run's state machine never waits on the disk. Another process holding a lock on the ledger, a slow or
full disk would otherwise freeze the event loop that serves visitors, or strand a run half-way through
its shutdown with the generator `shutting_down` for good. So each change is made in memory, where the
status and the daily budget read it, and a writer task copies it to the ledger from a worker thread,
retrying with backoff until it lands.

The memory also outlives the file. A ledger deleted or replaced while the server runs is noticed (at
the next write, and every few seconds) and written again with everything this process holds (this
month's entries: all that today's spend and the budget need). A ledger found empty at start-up while the
buckets hold images made by billed runs was lost while the server was down; that cannot be undone here,
so it is said loudly. The owner sees every ledger problem in the log and in the status
(`cost.ledger_problem`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import replace

from avatargen.durations import format_duration
from avatargen.metrics import GPU_BILLED_SECONDS
from avatargen.retry import backoff_delay
from avatargen.run import iso
from avatargen.storage.models import ImageRecord
from avatargen.storage.protocols import Ledger, StoredBucket
from avatargen.storage.spend import Day, Entry, Spend, daily, day_length, day_start, month_start

log = logging.getLogger("avatargen.generator")

CHECK_EVERY = 5.0  # how often the ledger file is checked for deletion or replacement
RETRY_MAX = 10.0  # longest wait between two attempts to write the ledger


class Billing:
    def __init__(self, ledger: Ledger, hourly_cost: float, *, check_every: float = CHECK_EVERY) -> None:
        self.ledger = ledger
        self.hourly_cost = hourly_cost
        self.check_every = check_every
        self._write_problem: str | None = None
        self._history_problem: str | None = None
        self._entries: dict[str, Entry] = {}
        self._unwritten: dict[str, Entry] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    @property
    def problem(self) -> str | None:
        """Why the ledger on disk is behind or short of the truth, for the status; None when it is not."""
        return self._write_problem or self._history_problem

    async def load(self, buckets: Mapping[str, StoredBucket], provider: str | None) -> None:
        """This month's entries and any left open, from the ledger; then write behind from now on.

        `provider`: the provider whose runs are billed (None when none are), to recognise images of
        earlier billed runs in the buckets when the ledger has nothing.
        """
        entries = await self.ledger.entries(month_start(time.time()))
        self._entries = {entry.run_id: entry for entry in entries}
        if not entries and provider is not None:
            earlier = await _image_of_an_earlier_run(self.ledger, buckets, provider)
            if earlier is not None:
                self._found_empty(earlier)
        self._writer = asyncio.create_task(self._write_behind(), name="ledger-writer")

    def start(self, run_id: str, when: float, hourly_cost: float | None = None) -> None:
        """Billing may start: the start request is about to go out (an entry open from now, so that a crash
        before the provider answers still counts the time). `hourly_cost`: the machine's own price when
        its provider says it (RunPod does), else the configured one."""
        self._set(Entry(run_id, when, None, self.hourly_cost if hourly_cost is None else hourly_cost))

    def accepted(self, run_id: str, when: float) -> None:
        """The provider accepted the start: billing starts at `when` (see `Provider.start`), as the provider
        bills, not at the first attempt it refused."""
        entry = self._entries.get(run_id)
        if entry is not None and entry.stopped is None and entry.started != when:
            self._set(replace(entry, started=when))

    def stop(self, run_id: str, when: float) -> None:
        """Billing ends: the stop is confirmed."""
        entry = self._entries.get(run_id)
        if entry is not None and entry.stopped is None:
            self._set(replace(entry, stopped=when))
            GPU_BILLED_SECONDS.inc(entry.seconds_since(entry.started, when))

    def reprice(self, run_id: str, hourly_cost: float) -> None:
        """The run's hourly rate as now known (a serverless run's worker time spread over the run)."""
        entry = self._entries.get(run_id)
        if entry is not None and entry.hourly_cost != hourly_cost:
            self._set(replace(entry, hourly_cost=hourly_cost))

    def count_image(self, run_id: str) -> None:
        """The run stored an image: counted in memory now, written with the run's stop."""
        entry = self._entries.get(run_id)
        if entry is not None:
            self._entries[run_id] = replace(entry, images=entry.images + 1)

    async def history(self, days: int, now: float | None = None) -> list[Day]:
        """Billed time, cost and images per UTC day over the last `days` days, today last.

        Earlier months come from the ledger file; what this process holds in memory (this month, and
        whatever is not written yet) wins over it. A ledger that cannot be read leaves this month's days.
        """
        now = time.time() if now is None else now
        since = day_start(now) - (days - 1) * day_length()
        try:
            stored = await self.ledger.entries(since)
        except Exception as exc:  # the chart is not worth an error page; the log says why it is short
            log.warning("the cost ledger %s cannot be read for the daily history (%s): showing this month's "
                        "days only", self.ledger.location, exc)
            stored = []
        entries = {entry.run_id: entry for entry in stored} | self._entries
        return daily(entries.values(), days, now)

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
                      entry.run_id, billed, iso(entry.started), iso(entry.stopped) or "now", self.ledger.location)

    def _set(self, entry: Entry) -> None:
        self._entries[entry.run_id] = self._unwritten[entry.run_id] = entry
        self._wake.set()

    def _found_empty(self, image: ImageRecord) -> None:
        run_id, made = image.metadata["run_id"], image.metadata.get("created_at")
        self._history_problem = (f"the cost ledger was found empty at start-up, although run {run_id} made images "
                                 f"on {made}: spend before this start is not counted")
        log.error("the cost ledger %s holds no billed time, yet bucket %s holds images made on the %s machine by "
                  "run %s (%s): the ledger was deleted or replaced while the server was down. Spend billed before "
                  "now is not counted, so today's spend and the daily budget start again from 0; restore the "
                  "ledger from a backup if you have one", self.ledger.location, image.bucket,
                  _provider(image), run_id, made)

    async def _write_behind(self) -> None:
        failures = 0
        while True:
            if not self._closing:
                wait = backoff_delay(failures - 1, base=0.5, cap=RETRY_MAX) if failures else self.check_every
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                self._wake.clear()
            try:
                await self._write()
            except Exception as exc:  # whatever the disk says, the run goes on; the record waits here
                failures += 1
                problem = f"the cost ledger cannot be written ({exc}); billed time is kept in memory until it can"
                if problem != self._write_problem:
                    log.error("%s: %s", self.ledger.location, problem)
                self._write_problem = problem
                if self._closing:
                    return
                continue
            if failures:
                log.warning("the cost ledger %s is written again", self.ledger.location)
                failures, self._write_problem = 0, None
            if self._closing and not self._unwritten:
                return

    async def _write(self) -> None:
        """Recreate the ledger if it was lost, then write what is unwritten (in a worker thread)."""
        lost = await self.ledger.reopen_if_lost()
        if lost is not None:
            self._unwritten = dict(self._entries)
            log.error("the cost ledger %s was %s while the server ran: written again with the %d billing "
                      "record(s) of this month this process holds; records of earlier months are gone unless "
                      "you restore them", self.ledger.location, lost, len(self._unwritten))
        batch = list(self._unwritten.values())
        if batch:
            await self.ledger.record(batch)
        for entry in batch:
            if self._unwritten.get(entry.run_id) is entry:
                del self._unwritten[entry.run_id]


def _provider(image: ImageRecord) -> object:
    """The provider whose machine made an image: `provider`, or `backend` in images made before the SD
    backend took that name (it held the provider's then)."""
    return image.metadata.get("provider", image.metadata.get("backend"))


async def _image_of_an_earlier_run(ledger: Ledger, buckets: Mapping[str, StoredBucket],
                                   provider: str) -> ImageRecord | None:
    """The newest image a run on the `provider`'s machine made, when the ledger holds no entry at all."""
    if not await ledger.is_empty():
        return None
    made = [record for bucket in buckets.values() for record in await bucket.newest(1)
            if record.metadata.get("run_id") and _provider(record) == provider]
    return max(made, key=lambda record: record.created_at, default=None)
