"""SIGKILL in the middle of a run: the next start stops the machine, and no half-written image shows.

The machine lives in a simulator process of its own (as a real Paperspace machine or RunPod pod outlives our
process), and `avatargen serve` runs as a real process that is killed without any chance to clean up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from PIL import Image

from avatargen import testing
from avatargen.api import AdminClient, NewImage, ServerEvent, StateChange
from avatargen.testing import Service, Simulator, avatargen_server, free_port
from tests.processes import describe, running, still_running_after
from tests.support import FAST, write_config

TOKEN = "crash-test-token"
EventTest = Callable[[ServerEvent], bool]


@pytest.fixture(params=["paperspace", "runpod"])
def simulator(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Simulator]:
    with Simulator(tmp_path / "simulator.log", boot_delay="300ms", stop_delay="200ms", sd_boot_delay="100ms",
                   step_time="5ms", api=request.param) as sim:
        yield sim


def nth(kind: type, count: int) -> EventTest:
    """Matches the count-th event of a kind."""
    seen = itertools.count(1)
    return lambda event: isinstance(event, kind) and next(seen) == count


def visible_images_are_whole(bucket: Path) -> int:
    images = sorted(bucket.glob("*.webp"))
    for image in images:
        assert image.with_suffix(".json").is_file(), f"{image.name} has no metadata"
        with Image.open(image) as picture:
            picture.load()
            assert picture.size == (64, 64)
    return len(images)


def machine_config(tmp_path: Path, simulator: Simulator) -> Path:
    """avatargen speaking to the standalone simulator exactly as to the provider and a remote SD web UI."""
    return testing.write_config(tmp_path, FAST, simulator.provider_config(), {"buckets": {"fallback": {"max": 400}}})


def server_for(config: Path, simulator: Simulator, port: int) -> Service:
    return avatargen_server(config, config.parent / "server.log", token=TOKEN, port=port, env=simulator.env())


async def started(server: Service) -> Service:
    return await asyncio.to_thread(server.start)


async def first_event(server: Service, matches: EventTest, timeout: float = 60) -> ServerEvent:
    """The first event in the server's history (from its start) that matches."""
    async with AdminClient(server.url, TOKEN) as admin, asyncio.timeout(timeout):
        return await admin.first_event(matches, since="0")


async def refill(server: Service) -> None:
    async with AdminClient(server.url, TOKEN) as admin:
        await admin.refill()


async def test_sigkill_mid_run_then_restart_stops_machine(tmp_path: Path, simulator: Simulator) -> None:
    config = machine_config(tmp_path, simulator)
    server = await started(server_for(config, simulator, free_port()))
    try:
        await refill(server)
        await first_event(server, nth(NewImage, 5))
    finally:
        server.kill()
    assert simulator.machine()["state"] != "off"  # nobody stopped it: the process died
    unique, fallback = tmp_path / "data" / "unique", tmp_path / "data" / "fallback"
    assert visible_images_are_whole(unique) + visible_images_are_whole(fallback) >= 5

    again = await started(server_for(config, simulator, server.port))
    try:
        # The start-up check stops the orphaned machine; its events are in the process's history.
        await first_event(again, lambda event: isinstance(event, StateChange) and event.machine_state == "off")
        assert simulator.machine()["state"] == "off"
        for bucket in (unique, fallback):
            visible_images_are_whole(bucket)
            assert not list((bucket / ".tmp").glob("*")), "leftover work files were not cleaned up"
            assert not list((bucket / ".claimed").glob("*"))
        assert "no run is active: stopping it" in again.log_text()
    finally:
        await stop_gracefully(again)


async def stop_gracefully(server: Service) -> None:
    """SIGTERM: a clean shutdown, exit status 0."""
    assert await asyncio.to_thread(server.stop, 60) == 0
    assert server.process is not None
    assert server.log_text().rstrip().splitlines()[-1].endswith(f"Finished server process [{server.process.pid}]")


@pytest.mark.parametrize("state", ["booting", "generating"])
async def test_sigterm_during_a_run_stops_the_machine_before_exit(tmp_path: Path, simulator: Simulator,
                                                                 state: str) -> None:
    config = machine_config(tmp_path, simulator)
    server = await started(server_for(config, simulator, free_port()))
    try:
        await refill(server)
        await first_event(server, lambda event: isinstance(event, StateChange) and event.state == state)
    finally:
        await stop_gracefully(server)
    assert simulator.machine()["state"] == "off"
    assert "aborting run" in server.log_text() and "the server is shutting down" in server.log_text()


async def test_sigkill_of_the_server_leaves_none_of_its_processes_behind(tmp_path: Path) -> None:
    server = await started(avatargen_server(write_config(tmp_path), tmp_path / "server.log", token=TOKEN))
    try:
        await refill(server)
        await first_event(server, nth(NewImage, 1))  # the imaging process has made an avatar
        assert server.process is not None
        children = psutil.Process(server.process.pid).children(recursive=True)
        commands = describe(running(children))
        assert "multiprocessing.spawn" in commands and "multiprocessing.resource_tracker" in commands, commands
    finally:
        server.kill()
    left = await asyncio.to_thread(still_running_after, children, timeout=10)
    assert not left, f"still running after the server was killed:\n{describe(left)}"
