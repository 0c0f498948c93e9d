"""Shared test helpers: a fast config file, a running generator against the simulated GPU, event waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp

from avatargen import testing
from avatargen.config import Settings, load_settings
from avatargen.events import EventHub, Subscription
from avatargen.generator import AvatarGenerator
from avatargen.simulator import LoopbackServer, SimulatedGpu
from avatargen.storage.files.folder_bucket import folder_buckets
from avatargen.storage.files.ledger import FileLedger
from server.app import create_app
from server.serve import uvicorn_options

FAST: dict[str, Any] = {
    "server": {"data_dir": "data", "port": 0},
    "serving": {"unique_every": "10m", "unique_burst": 6},
    "buckets": {
        "unique": {"dir": "data/unique", "min": 0, "max": 4},
        "fallback": {"dir": "data/fallback", "min": 0, "max": 6},
    },
    "generator": {"check_every": "1h", "concurrency": 2, "image_size": 64, "image_retries": 1},
    "gpu": {
        "provider": "simulated", "ready_timeout": "20s", "stop_timeout": "10s", "poll_every": "20ms",
        "hourly_cost": 3600.0,  # one currency unit per billed second: easy to check
        # Far off: an automatic run starts only when the budget can pay for the boot and the stop, bounded by
        # ready_timeout and stop_timeout until some were seen (30 s here). Budget tests set their own.
        "daily_budget": 1000.0,
        "simulated": {"boot_delay": "300ms", "stop_delay": "150ms", "sd_boot_delay": "100ms", "step_time": "2ms"},
    },
    "sd": {"steps": 10, "width": 128, "height": 128, "batch_size": 2},
}


def write_config(directory: Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """A config.toml in directory: the fast test settings with dotted-key overrides ("gpu.provider") applied."""
    layer: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        *tables, key = dotted.split(".")
        target = layer
        for table in tables:
            target = target.setdefault(table, {})
        target[key] = value
    return testing.write_config(directory, FAST, layer)


def fast_settings(directory: Path, **overrides: Any) -> Settings:
    return load_settings(write_config(directory, {k.replace("__", "."): v for k, v in overrides.items()}))


@contextlib.asynccontextmanager
async def running_generator(
    settings: Settings, before_start: Callable[[SimulatedGpu], Awaitable[None]] | None = None
) -> AsyncIterator[tuple[AvatarGenerator, SimulatedGpu]]:
    """A started generator against a simulated GPU on loopback; closed (machine stopped) on exit."""
    buckets = folder_buckets(settings)
    for bucket in buckets.values():
        bucket.folder.repair.recover()
    async with SimulatedGpu(settings.gpu.simulated, hourly_price=settings.gpu.hourly_cost,
                            backend=settings.sd.backend) as gpu:
        ledger = await FileLedger.open(settings.server.data_dir / "ledger.sqlite3")
        generator = AvatarGenerator(settings, buckets, gpu.provider(settings.gpu, data_dir=settings.server.data_dir),
                                    ledger, EventHub())
        if before_start is not None:
            await before_start(gpu)
        await generator.start()
        try:
            yield generator, gpu
        finally:
            await generator.close()
            await ledger.aclose()


async def wait_for_event(subscription: Subscription, kind: str, check: Callable[[dict[str, Any]], bool],
                         timeout: float = 20.0) -> dict[str, Any]:
    """The first event of a kind whose data passes check (events are awaited, not polled)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await subscription.next()
            if event is not None and event.type == kind and check(event.data):
                return event.data


async def wait_until(condition: Callable[[], bool], timeout: float = 20.0, every: float = 0.02) -> None:
    """For conditions nothing announces (another process's files, a simulator's clock)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp, **options: Any) -> AsyncIterator[str]:
    """An ASGI app and its lifespan under uvicorn on a free loopback port, in this event loop; its URL.
    It ends as `avatargen serve` does on SIGTERM: the lifespan shuts down."""
    async with LoopbackServer(app, graceful=True, lifespan="on", **options) as server:
        yield server.url


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[str, Starlette]]:
    """The real app under uvicorn on a loopback port, proxy headers trusted as `avatargen serve` does."""
    app = create_app(settings)
    async with serve_asgi(app, **uvicorn_options(settings.server)) as url:
        yield url, app
