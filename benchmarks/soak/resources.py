"""Resources, sampled: each server's RSS, open file descriptors and threads (the process and its children,
from /proc), its event hub's listeners (the status's `event_listeners`, asked of that very process), the
keys in Redis, and the log's size on disk.

A replica's connections to Redis are counted apart from its other descriptors: its pool opens them as
concurrent commands need them, up to its bound (`MAX_CONNECTIONS`, 16), and keeps them, so a slow Redis
(the "Redis slowed" fault) grows them by several at once, for good, and they may grow by that bound. The
60-minute run counted them among the open fds: a replica's 25 grew to 29 (+16%) after such a fault.

A server started again by a fault begins a new life, and so does a replica that takes the generator over
for the first time in its life (it loads the generator's modules and clients then, and keeps them when it
hands the generator back: it is judged as the generator from then on). Every life that lasted `floor`
seconds at least (half the fault cycle in a full soak: a process the schedule restarts lives about one
cycle) is judged: its first part (the first ten minutes, at most half of it, or with --quick its first
quarter) against its last quarter, the highest value of each: caches fill early, a leak keeps climbing. A
count may grow by one (a thread, a panel's listener) without counting as growth; everything else by less
than 10%. One process per setup the schedule never restarts judges the long run: the first replica (only
frozen, never killed) and redis-server's keys (they outlive its restarts); the files setup's one server is
restarted every cycle, so its lives are judged one by one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import redis

from avatargen.storage.redis.connection import MAX_CONNECTIONS
from avatargen.testing import family
from benchmarks.soak.setups import AUTH, Setup

MEASURES = ("RSS MiB", "open fds", "threads", "Redis connections")
# How much a measure may grow, as a count, without counting as growth: a thread or a panel's listener; a
# Redis pool's connections up to its bound (the blocking reads' pool, one a reader, opens none after start).
COUNT_SLACK = {"RSS MiB": 0.0, "open fds": 0.0, "threads": 1.0, "event listeners": 1.0, "Redis keys": 0.0,
               "Redis connections": float(MAX_CONNECTIONS)}
GROWTH_LIMIT = 0.10
LOG_FILES = "avatargen.log*"


@dataclass(frozen=True)
class Reading:
    at: float
    pid: int
    role: str  # "generator" or "visitors": a replica that takes the generator over loads its modules then
    value: float


def process_usage(pid: int, redis_port: int | None) -> tuple[float, float, float, float]:
    """RSS in MiB, open fds (less the connections to Redis), threads and connections to Redis on `redis_port`
    of a process and its descendants."""
    rss = fds = threads = to_redis = 0.0
    for member in family(pid):
        with contextlib.suppress(OSError, psutil.Error):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
            fds += len(list(Path(f"/proc/{member}/fd").iterdir()))
            if redis_port is not None:
                to_redis += sum(1 for connection in psutil.Process(member).net_connections(kind="tcp")
                                if connection.raddr and connection.raddr.port == redis_port)
    return rss, fds - to_redis, threads, to_redis


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
                redis_port = setup.redis.port if setup.redis is not None else None
                for measure, value in zip(MEASURES, process_usage(pid, redis_port), strict=True):
                    if measure != "Redis connections" or redis_port is not None:
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

    def growth(self, quick: bool, floor: float) -> list[Growth]:
        """Per process, role and measure, every life of at least `floor` seconds judged: its first part against
        its last quarter (see the module's docstring); the row gives the longest judged life's figures, how
        many lives were judged and the worst growth among them. Redis keys outlive redis-server's restarts (its
        append-only file): one life for the whole soak."""
        rows = []
        for (process, measure), readings in sorted(self.readings.items()):
            lives: dict[str, list[list[Reading]]] = defaultdict(list)  # role -> lives, each a run of one pid
            last: Reading | None = None
            role = ""
            for reading in readings:
                if measure == "Redis keys":
                    role = reading.role
                    new = last is None
                elif last is None or last.pid != reading.pid:
                    role, new = reading.role, True
                else:  # a process that held the generator once keeps its modules: judged as the generator since
                    new = role == "visitors" and reading.role == "generator"
                    role = "generator" if new else role
                if new:
                    lives[role].append([])
                lives[role][-1].append(reading)
                last = reading
            for role, runs in sorted(lives.items()):
                judged = [judge(life, quick) for life in runs if len(life) >= 4 and life[-1].at - life[0].at >= floor]
                if not judged:
                    continue
                longest = max(judged, key=lambda verdict: verdict.span)
                worst = max(judged, key=lambda verdict: verdict.growth)
                holds = all(verdict.holds(measure) for verdict in judged)
                rows.append(Growth(f"{process} ({role})", measure, longest, len(judged), worst.growth, holds))
        return rows


@dataclass(frozen=True)
class Verdict:
    """One life of one measure: how long it was judged, its first part's highest value and its last quarter's."""

    span: float
    first: float
    last: float
    samples: int

    @property
    def growth(self) -> float:
        return (self.last - self.first) / self.first if self.first else 0.0

    def holds(self, measure: str) -> bool:
        return self.last <= self.first * (1 + GROWTH_LIMIT) or self.last - self.first <= COUNT_SLACK[measure]


@dataclass(frozen=True)
class Growth:
    """A row of the resources table: the longest judged life's `verdict`, how many lives were judged, the
    worst growth of any, and whether every one held."""

    process: str
    measure: str
    verdict: Verdict
    lives: int
    worst: float
    holds: bool


def judge(life: list[Reading], quick: bool) -> Verdict:
    """A life's first part (its first ten minutes, at most half of it; with --quick its first quarter) and its
    last quarter, the highest value of each: caches fill early, a leak keeps climbing."""
    span = life[-1].at - life[0].at
    first_until = life[0].at + (span / 4 if quick else min(600.0, span / 2))
    last_from = life[-1].at - span / 4
    return Verdict(span, max(reading.value for reading in life if reading.at <= first_until),
                   max(reading.value for reading in life if reading.at >= last_from), len(life))
