"""Resources, sampled: each server's RSS, open file descriptors and threads (the process and its children,
from /proc), its event hub's listeners (the status's `event_listeners`, asked of that very process), the
keys in Redis, and the log's size on disk.

A server started again by a fault begins a new life, and so does a replica that takes the generator over
(it loads the generator's modules and clients then): growth is judged within the longest life of each
slot in one role (if it lasted a quarter of the soak at least): its first part (the first ten minutes, at most half of
it, or with --quick its first quarter) against its last quarter, the highest value of each: caches fill
early, a leak keeps climbing. A count may grow by one (a thread, a panel's listener) without counting as
growth; everything else by less than 10%.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from avatargen.testing import family
from benchmarks.soak.setups import AUTH, Setup

MEASURES = ("RSS MiB", "open fds", "threads", "event listeners")
COUNT_SLACK = {"RSS MiB": 0.0, "open fds": 0.0, "threads": 1.0, "event listeners": 1.0, "Redis keys": 0.0}
GROWTH_LIMIT = 0.10
LOG_FILES = "avatargen.log*"


@dataclass(frozen=True)
class Reading:
    at: float
    pid: int
    role: str  # "generator" or "visitors": a replica that takes the generator over loads its modules then
    value: float


def _proc(pid: int) -> tuple[float, float, float]:
    """RSS in MiB, open fds and threads of a process and its descendants."""
    rss = fds = threads = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
            fds += len(list(Path(f"/proc/{member}/fd").iterdir()))
    return rss, fds, threads


def log_bytes(folder: Path) -> tuple[int, int]:
    """The log files in a data folder: how many, and their bytes together."""
    files = list(folder.glob(LOG_FILES))
    return len(files), sum(path.stat().st_size for path in files if path.exists())


class Resources:
    """A thread sampling every slot of every setup (and each Redis) every `every` seconds until `stop`."""

    def __init__(self, setups: list[Setup], stop: threading.Event, every: float) -> None:
        self.setups = setups
        self.stop = stop
        self.every = every
        self.readings: dict[tuple[str, str], list[Reading]] = defaultdict(list)  # (process, measure) -> readings
        self.largest_log: dict[str, tuple[int, int]] = {}  # data folder -> the most files and bytes seen
        self.thread = threading.Thread(target=self._loop, name="resources", daemon=True)

    def _sample(self, client: httpx.Client) -> None:
        now = time.time()
        for setup in self.setups:
            for slot in setup.serving():
                pid = slot.pid()
                if pid is None:
                    continue
                name = f"{setup.name} {slot.name}"
                try:
                    role = "visitors" if client.get(slot.url + "/healthz", timeout=5).json().get(
                        "generator") == "elsewhere" else "generator"
                except (httpx.HTTPError, ValueError):
                    continue
                for measure, value in zip(MEASURES, _proc(pid), strict=False):
                    self.readings[(name, measure)].append(Reading(now, pid, role, value))
                # Not while the storage is down: the status answers 503 then, without the count.
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    listeners = client.get(slot.url + "/admin/api/status", headers=AUTH, timeout=5).json()[
                        "event_listeners"]
                    self.readings[(name, "event listeners")].append(Reading(now, pid, role, listeners))
            if setup.redis is not None and setup.redis.process is not None:
                with contextlib.suppress(redis.RedisError):
                    keys = redis.Redis.from_url(setup.redis.url, socket_timeout=2).dbsize()
                    self.readings[(f"{setup.name} redis-server", "Redis keys")].append(
                        Reading(now, setup.redis.process.pid, "storage", float(keys)))
            for folder in setup.data_dirs:
                with contextlib.suppress(OSError):
                    count, size = log_bytes(folder)
                    most = self.largest_log.get(str(folder), (0, 0))
                    self.largest_log[str(folder)] = (max(count, most[0]), max(size, most[1]))

    def _loop(self) -> None:
        with httpx.Client() as client:
            while True:
                self._sample(client)
                if self.stop.wait(self.every):
                    return

    def growth(self, quick: bool, soak_seconds: float) -> list[tuple[str, str, float, float, int, bool]]:
        """Per process and measure: (process (role), measure, first, last, samples, holds), in its longest life in
        one role, if that lasted a quarter of the soak at least (a life begun by a late restart is still warming
        up)."""
        rows = []
        for (process, measure), readings in sorted(self.readings.items()):
            lives: list[list[Reading]] = []  # runs of readings of one process in one role, in order
            for reading in readings:
                if not lives or (lives[-1][-1].pid, lives[-1][-1].role) != (reading.pid, reading.role):
                    lives.append([])
                lives[-1].append(reading)
            life = max(lives, key=lambda life: life[-1].at - life[0].at)
            span = life[-1].at - life[0].at
            if len(life) < 4 or span < soak_seconds / 4:
                continue
            first_until = life[0].at + (span / 4 if quick else min(600.0, span / 2))
            last_from = life[-1].at - span / 4
            first = max(reading.value for reading in life if reading.at <= first_until)
            last = max(reading.value for reading in life if reading.at >= last_from)
            holds = last <= first * (1 + GROWTH_LIMIT) or last - first <= COUNT_SLACK[measure]
            rows.append((f"{process} ({life[0].role})", measure, first, last, len(life), holds))
        return rows
