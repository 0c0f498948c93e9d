"""SIGKILL in the middle of a run: the next start stops the machine, and no half-written image shows.

The machine lives in a simulator process of its own (as a real Paperspace machine outlives our process),
and `avatargen serve` runs as a real process that is killed without any chance to clean up.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from PIL import Image

from benchmarks.harness import SIM_KEY_ENV, Admin, EventTest, Service, Simulator, avatargen_server, free_port
from tests.processes import describe, running, still_running_after
from tests.support import write_config


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(tmp_path / "simulator.log", boot_delay="300ms", stop_delay="200ms", sd_boot_delay="100ms",
                   step_time="5ms") as sim:
        yield sim


def nth(kind: str, count: int) -> EventTest:
    """Matches the count-th event of a kind."""
    seen = itertools.count(1)
    return lambda event_kind, _data: event_kind == kind and next(seen) == count


def visible_images_are_whole(bucket: Path) -> int:
    images = sorted(bucket.glob("*.webp"))
    for image in images:
        assert image.with_suffix(".json").is_file(), f"{image.name} has no metadata"
        with Image.open(image) as picture:
            picture.load()
            assert picture.size == (64, 64)
    return len(images)


def paperspace_config(tmp_path: Path, simulator: Simulator) -> Path:
    """avatargen speaking to the standalone simulator exactly as to Paperspace and a remote SD web UI."""
    return write_config(tmp_path, {
        "gpu.provider": "paperspace",
        "gpu.paperspace.api_url": simulator.info["paperspace_url"],
        "gpu.paperspace.api_key_env": SIM_KEY_ENV,
        "gpu.paperspace.machine_id": simulator.info["machine_id"],
        "sd.url": simulator.info["sd_url"],
        "buckets.fallback.max": 400,
    })


def server_for(config: Path, simulator: Simulator, port: int) -> Service:
    return avatargen_server(config, config.parent / "server.log", port=port, env=simulator.env())


def test_sigkill_mid_run_then_restart_stops_machine(tmp_path: Path, simulator: Simulator) -> None:
    config = paperspace_config(tmp_path, simulator)
    server = server_for(config, simulator, free_port()).start()
    try:
        admin = Admin(server.url)
        admin.refill([])
        admin.wait_event(nth("image", 5))
    finally:
        server.kill()
    assert simulator.machine()["state"] != "off"  # nobody stopped it: the process died
    unique, fallback = tmp_path / "data" / "unique", tmp_path / "data" / "fallback"
    assert visible_images_are_whole(unique) + visible_images_are_whole(fallback) >= 5

    again = server_for(config, simulator, server.port).start()
    try:
        # The start-up check stops the orphaned machine; its events are in the process's history.
        Admin(again.url).wait_event(lambda kind, data: kind == "state" and data.get("machine_state") == "off")
        assert simulator.machine()["state"] == "off"
        for bucket in (unique, fallback):
            visible_images_are_whole(bucket)
            assert not list((bucket / ".tmp").glob("*")), "leftover work files were not cleaned up"
            assert not list((bucket / ".claimed").glob("*"))
        assert "no run is active: stopping it" in again.log_text()
    finally:
        stop_gracefully(again)


def stop_gracefully(server: Service) -> None:
    """SIGTERM; uvicorn shuts down, then re-raises the signal, so the exit status may say SIGTERM."""
    assert server.stop(60) in (0, -signal.SIGTERM)
    assert server.process is not None
    assert server.log_text().rstrip().splitlines()[-1].endswith(f"Finished server process [{server.process.pid}]")


@pytest.mark.parametrize("state", ["booting", "generating"])
def test_sigterm_during_a_run_stops_the_machine_before_exit(tmp_path: Path, simulator: Simulator, state: str) -> None:
    config = paperspace_config(tmp_path, simulator)
    server = server_for(config, simulator, free_port()).start()
    try:
        admin = Admin(server.url)
        admin.refill([])
        admin.wait_event(lambda kind, data: kind == "state" and data["state"] == state)
    finally:
        stop_gracefully(server)
    assert simulator.machine()["state"] == "off"
    assert "aborting run" in server.log_text() and "the server is shutting down" in server.log_text()


def test_sigkill_of_the_server_leaves_none_of_its_processes_behind(tmp_path: Path) -> None:
    server = avatargen_server(write_config(tmp_path), tmp_path / "server.log").start()
    try:
        Admin(server.url).refill(["unique"])
        Admin(server.url).wait_event(nth("image", 1))  # the imaging process has made an avatar
        assert server.process is not None
        children = psutil.Process(server.process.pid).children(recursive=True)
        commands = describe(running(children))
        assert "multiprocessing.spawn" in commands and "multiprocessing.resource_tracker" in commands, commands
    finally:
        server.kill()
    left = still_running_after(children, timeout=10)
    assert not left, f"still running after the server was killed:\n{describe(left)}"
