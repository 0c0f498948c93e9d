"""deploy/gpu_watchdog.py against the simulated providers and SD servers, as separate processes: it never
stops a machine while a run keeps its SD server busy, and once the avatargen that runs it is SIGKILLed for
good, it stops the machine after --idle. It runs on Python's standard library alone (`python -I -S`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avatargen import testing
from avatargen.api import AdminClient, NewImage
from avatargen.testing import SIM_KEY_ENV, Simulator, avatargen_server
from tests.support import FAST

WATCHDOG = Path(__file__).resolve().parent.parent / "deploy" / "gpu_watchdog.py"
TOKEN = "watchdog-test-token"
IDLE = 5.0  # far above the gaps between a run's jobs (two requests in flight: the next one waits queued)


def watchdog(simulator: Simulator, log: Path) -> subprocess.Popen[bytes]:
    """The watchdog as the owner starts it on the machine: beside the SD server, with the machine's id and key."""
    info = simulator.info
    env = {"PATH": "/usr/bin:/bin", SIM_KEY_ENV: info["api_key"]}
    command = [sys.executable, "-I", "-S", str(WATCHDOG), "--idle", f"{IDLE}s", "--every", "200ms",
               "--sd-url", info["sd_url"], "--provider", info["api"], "--api-url", info["api_url"],
               "--machine-id", info["machine_id"], "--key-env", SIM_KEY_ENV]
    with log.open("ab") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=output)


def test_help_lists_idle() -> None:
    answer = subprocess.run([sys.executable, "-I", "-S", str(WATCHDOG), "--help"], capture_output=True, text=True,
                            timeout=30, check=True)
    assert "--idle" in answer.stdout and "20m" in answer.stdout


# Its own bounds (the first image 120 s, three idle periods, the watchdog's stop 120 s, the machine off 60 s) and
# its simulator's and server's start and stop: beside stress-ng it took 88 s of the suite's 120 s default.
@pytest.mark.timeout(360)
@pytest.mark.parametrize(("api", "backend"), [("runpod", "a1111"), ("paperspace", "comfyui")])
async def test_a_run_is_never_stopped_and_a_dead_avatargen_machine_stops(tmp_path: Path, api: str,
                                                                          backend: str) -> None:
    log = tmp_path / "watchdog.log"
    with Simulator(tmp_path / "simulator.log", boot_delay="300ms", stop_delay="200ms", sd_boot_delay="100ms",
                   step_time="20ms", api=api, backend=backend) as simulator:
        config = testing.write_config(tmp_path, FAST, simulator.provider_config(),
                                      {"buckets": {"fallback": {"max": 2000}}})
        with avatargen_server(config, tmp_path / "server.log", token=TOKEN, env=simulator.env()) as service:
            async with AdminClient(service.url, TOKEN, timeout=30) as admin, asyncio.timeout(120):
                await admin.refill(["fallback"])
                await admin.first_event(lambda event: isinstance(event, NewImage), since="0")
            guard = watchdog(simulator, log)  # started with the machine, as a pod template starts it
            try:
                # Three idle periods of a run under way: images keep coming, the machine stays on.
                async with AdminClient(service.url, TOKEN, timeout=30) as admin:
                    done_before = (await admin.status()).run.done  # type: ignore[union-attr]
                    await asyncio.sleep(3 * IDLE)
                    status = await admin.status()
                assert status.state == "generating" and status.run is not None and status.run.done > done_before
                assert guard.poll() is None and simulator.machine()["state"] == "ready"
                service.kill()  # for good: nothing will ever stop this machine but the watchdog
                killed_at = time.monotonic()
                assert guard.wait(120) == 0, log.read_text()
                stopped_after = time.monotonic() - killed_at
            finally:
                if guard.poll() is None:
                    guard.kill()
                    guard.wait()
        deadline = time.monotonic() + 60
        while simulator.machine()["state"] != "off":
            assert time.monotonic() < deadline, simulator.machine()
            await asyncio.sleep(0.2)
    assert stopped_after >= IDLE  # the jobs in flight were finished first, then the idle time waited out
    text = log.read_text()
    assert "stopping this machine" in text and "accepted the stop" in text
