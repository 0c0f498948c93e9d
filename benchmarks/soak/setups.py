"""The processes of the soak: per setup a simulated GPU, its `avatargen serve` processes (slots), its Redis;
configs with time compressed; buckets seeded with fallbacks and with images held back, as the gate holds them.

A slot is one server on a fixed port, stopped, killed, frozen and started again by the fault schedule,
which says when a slot is down on purpose: a visitor turned away by a slot down on purpose is excused (a
load balancer's health check would have sent them elsewhere), any other failure is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from avatargen.config import load_settings
from avatargen.storage.backend import open_backend
from avatargen.storage.spend import DAY_SECONDS_ENV
from avatargen.testing import Receiver, RedisServer, Service, free_port, running_redis
from benchmarks.harness import ADMIN_TOKEN, avatargen_server, sample_avatars, write_config
from benchmarks.storage_faults import tmpfs

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SEEDED_FALLBACKS = 6
HELD_PER_BUCKET = 3  # images held back for review in each bucket before the start: never to be served
DATA_DISK = "128m"  # the tmpfs under the files setup's data folder, so that its disk can be filled
EXCUSE_AFTER = 2.0  # seconds after a slot is back during which its failures are still excused
STATUS_TIMEOUT = 5.0
LOG_MAX_BYTES, LOG_BACKUPS = 10_000, 3  # the smallest log allowed, so that the soak sees it rotate


def config_layer(day_seconds: float, *, budget_share: float) -> dict[str, Any]:
    """Time compressed: checks every 2 s, visitor windows of seconds (one face per visitor for 5 s), a
    fallback retired every 3 s, a machine that costs 1 a second and a daily budget of `budget_share` of a
    (compressed) day; a log rotated at 10 kB."""
    return {
        "server": {"log_max_bytes": LOG_MAX_BYTES, "log_backups": LOG_BACKUPS},
        "serving": {"unique_every": "500ms", "unique_burst": 4, "unique_per_visitor": "15s",
                    "fallback_retire_every": "3s", "cache_max_age": "1h", "same_face_for": "5s"},
        "buckets": {"unique": {"min": 4, "max": 10}, "fallback": {"min": 6, "max": 12}},
        "generator": {"check_every": "2s", "image_retries": 1, "max_consecutive_failures": 3},
        # The bounds on a boot (300 ms) and a stop (200 ms; through stop_500 three 500s retried with up to 3.5 s
        # of backoff), with room for a loaded machine: until a process has seen a boot, the budget keeps its
        # bound for the first run; it keeps the stop's bound (and a lease's takeover) for every run's end.
        "gpu": {"poll_every": "100ms", "ready_timeout": "4s", "stop_timeout": "5s", "hourly_cost": 3600.0,
                "daily_budget": round(budget_share * day_seconds, 1)},
        "sd": {"steps": 10},
    }


@dataclass
class Slot:
    """One `avatargen serve` of a setup, on a port of its own for all its lives."""

    name: str
    service: Service
    down_since: float | None = None
    downtimes: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return self.service.url

    def pid(self) -> int | None:
        process = self.service.process
        return process.pid if process is not None and process.poll() is None else None

    def up(self) -> bool:
        return self.down_since is None and self.pid() is not None

    def excused(self, start: float, end: float) -> bool:
        """Whether the slot was down on purpose at some time in [start, end] (or just before it came back)."""
        with self.lock:
            windows = [*self.downtimes, *([(self.down_since, time.time())] if self.down_since else [])]
        return any(down <= end and start <= back + EXCUSE_AFTER for down, back in windows)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The slot is down on purpose for the block."""
        with self.lock:
            self.down_since = time.time()
        try:
            yield
        finally:
            with self.lock:
                assert self.down_since is not None
                self.downtimes.append((self.down_since, time.time()))
                self.down_since = None

    def terminate_and_restart(self) -> None:
        with self.down():
            self.service.stop()
            self.service.start()

    def kill_and_restart(self) -> None:
        with self.down():
            self.service.kill()
            self.service.start()


@dataclass
class Setup:
    """One storage setup: its simulator, its servers, its Redis, what was seeded."""

    name: str
    api: str
    slots: list[Slot]
    simulator: Any  # avatargen.testing.Simulator
    data_dirs: list[Path]
    logs: list[Path]
    held: set[str]
    redis: RedisServer | None = None
    disk: Path | None = None  # a tmpfs that can be filled, or None where none could be mounted
    disk_note: str = ""

    def serving(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.up()]

    def status(self, client: httpx.Client) -> tuple[dict[str, Any], Slot] | None:
        """The admin status from the first slot up that answers (it forwards to the generator's process)."""
        for slot in self.serving():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = client.get(slot.url + "/admin/api/status", headers=AUTH, timeout=STATUS_TIMEOUT)
                if response.status_code == 200:
                    return response.json(), slot
        return None


def seed(config: Path) -> set[str]:
    """Fallbacks published and images held back in both buckets, as the generator leaves them; the held ids."""
    async def into_storage() -> set[str]:
        backend = open_backend(load_settings(config))
        try:
            buckets = backend.buckets
            for image in sample_avatars(SEEDED_FALLBACKS):
                await buckets["fallback"].publish(image, {"prompt": "soak seed", "backend": "soak"})
            held = set()
            for name in ("unique", "fallback"):
                for image in sample_avatars(HELD_PER_BUCKET):
                    held.add((await buckets[name].hold(image, {"prompt": "soak held", "backend": "soak"})).id)
            return held
        finally:
            await backend.aclose()

    return asyncio.run(into_storage())


def day_env(day_seconds: float, simulator: Any) -> dict[str, str]:
    return {**simulator.env(), DAY_SECONDS_ENV: f"{day_seconds:g}"}


@contextlib.contextmanager
def files_setup(work: Path, simulator: Any, layer: dict[str, Any], receiver: Receiver,
                day_seconds: float) -> Iterator[Setup]:
    """One server on the bucket folders, its data folder on a tmpfs where one can be mounted."""
    folder = work / "files"
    folder.mkdir()
    with contextlib.ExitStack() as stack:
        disk: Path | None = None
        note = ""
        try:
            disk = stack.enter_context(tmpfs(folder / "data", DATA_DISK))
        except (RuntimeError, OSError) as exc:
            note = f"no tmpfs for a full disk: {exc}"
        notify = {"notify": {"urls": [receiver.url("files")], "min_interval": "1s"}}
        config = write_config(folder, simulator.provider_config(), layer, notify)
        held = seed(config)
        slot = Slot("files", avatargen_server(config, folder / "server.log", env=day_env(day_seconds, simulator)))
        stack.enter_context(slot.service)
        yield Setup("files", "paperspace", [slot], simulator, [folder / "data"], [folder / "server.log"], held,
                    disk=disk, disk_note=note)


@contextlib.contextmanager
def redis_setup(work: Path, simulator: Any, layer: dict[str, Any], receiver: Receiver,
                day_seconds: float) -> Iterator[Setup]:
    """Two replicas sharing one redis-server (with an append-only file: it survives being stopped); each
    replica has a data folder of its own (its log)."""
    folder = work / "redis"
    folder.mkdir()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(running_redis(folder / "redis-data", appendonly=True))
        notify = {"notify": {"urls": [receiver.url("redis")], "min_interval": "1s"}}
        configs = []
        for n in range(2):
            replica = folder / f"replica-{n}"
            replica.mkdir()
            configs.append(write_config(replica, simulator.provider_config(), layer, notify, {
                "storage": {"backend": "redis", "url": redis.url}}))
        held = seed(configs[0])
        slots = [Slot(f"replica-{n}", avatargen_server(config, config.parent / "server.log", port=free_port(),
                                                       env=day_env(day_seconds, simulator)))
                 for n, config in enumerate(configs)]
        for slot in slots:
            stack.enter_context(slot.service)
        yield Setup("redis", "runpod", slots, simulator, [config.parent / "data" for config in configs],
                    [config.parent / "server.log" for config in configs], held, redis=redis)
