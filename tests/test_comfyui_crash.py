"""SIGKILL of `avatargen serve` while ComfyUI computes its jobs: the next start takes them off ComfyUI.

ComfyUI outlives our process where the owner keeps it on (`gpu.provider = "always_on"`): the jobs a killed
server queued there would be computed for nobody. Their prompt ids are in the data folder's journal
before they are sent; the restarted server's first probe cancels those still queued or running and says
so in its log. The simulated ComfyUI runs in a simulator process of its own, as a real one would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from avatargen import testing
from avatargen.api import AdminClient
from avatargen.sd.comfyui import JOURNAL
from avatargen.testing import Service, Simulator, avatargen_server, free_port
from tests.support import FAST
from tests.test_crash import started, stop_gracefully

TOKEN = "comfyui-crash-token"
RESTART_TIMEOUT = 90.0  # the restarted server's start, its run's start and its first probe, on a loaded machine


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    # 100 ms a sampling step: each job computes for seconds, so the killed server's jobs are still there
    with Simulator(tmp_path / "simulator.log", boot_delay="300ms", stop_delay="200ms", sd_boot_delay="100ms",
                   step_time="100ms", api="paperspace", backend="comfyui") as sim:
        yield sim


def queued(sd_url: str) -> set[str]:
    """The prompt ids on the simulated ComfyUI's queue, running or waiting (none while it is off or booting)."""
    try:
        response = httpx.get(f"{sd_url}/queue", timeout=10)
    except httpx.TransportError:
        return set()
    if response.status_code != 200:
        return set()
    queue = response.json()
    return {item[1] for part in ("queue_running", "queue_pending") for item in queue[part]}


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a blocking check off the event loop until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        await asyncio.sleep(0.2)


async def refill(server: Service) -> None:
    async with AdminClient(server.url, TOKEN) as admin:
        await admin.refill()


def server(config: Path, simulator: Simulator, port: int) -> Service:
    return avatargen_server(config, config.parent / "server.log", token=TOKEN, port=port, env=simulator.env())


async def test_sigkill_mid_run_then_restart_takes_our_jobs_off_an_always_on_comfyui(
        tmp_path: Path, simulator: Simulator) -> None:
    sd_url = simulator.info["sd_url"]
    journal = tmp_path / "data" / JOURNAL
    concurrency = {"generator": {"concurrency": 3}, "buckets": {"fallback": {"max": 400}}}
    config = testing.write_config(tmp_path, FAST, simulator.provider_config(), concurrency)
    first = await started(server(config, simulator, free_port()))
    try:
        await refill(first)
        await wait_for(lambda: len(queued(sd_url)) == 3, RESTART_TIMEOUT, "3 jobs on ComfyUI")
    finally:
        first.kill()
    left = set(json.loads(journal.read_text())["jobs"])
    assert len(left) >= 3  # the jobs on ComfyUI at the kill, written down before they were sent
    assert journal.stat().st_mode & 0o777 == 0o600

    # The owner's ComfyUI stays on: the next server uses it as it is, never stopping it.
    always_on = {"gpu": {"provider": "always_on"}, "sd": {"url": sd_url, "backend": "comfyui"}}
    config = testing.write_config(tmp_path, FAST, always_on, concurrency)
    again = await started(server(config, simulator, first.port))
    try:
        await refill(again)  # a run: its first probe of ComfyUI deals with what the killed server left
        await wait_for(lambda: "never collected" in again.log_text(), RESTART_TIMEOUT, "log line on the left jobs")
        # An interrupt ends the running job at its next step, as on a real ComfyUI: a moment after the line.
        await wait_for(lambda: not left & queued(sd_url), RESTART_TIMEOUT, "ComfyUI without the killed server's jobs")
        assert not left & set(json.loads(journal.read_text())["jobs"])
        [line] = [line for line in again.log_text().splitlines() if "never collected" in line]
        assert all(prompt_id in line for prompt_id in left), line
        assert "dropped from the queue" in line or "interrupted" in line, line
    finally:
        await stop_gracefully(again)
