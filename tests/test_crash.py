"""SIGKILL in the middle of a run: the next start stops the machine, and no half-written image shows.

The machine lives in a simulator process of its own (as a real Paperspace machine outlives our process),
and `avatargen serve` runs as a real process that is killed without any chance to clean up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support import write_config

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "crash-test-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def simulator() -> Iterator[dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "avatargen.simulator", "--boot-delay", "300ms", "--stop-delay", "200ms",
         "--sd-boot-delay", "100ms", "--step-time", "5ms"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert process.stdout is not None
    try:
        yield json.loads(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(10)


def machine_state(sim: dict[str, str]) -> str:
    response = httpx.get(f"{sim['paperspace_url']}/machines/{sim['machine_id']}",
                         headers={"Authorization": f"Bearer {sim['api_key']}"})
    return response.json()["state"]


def start_server(config: Path, port: int, sim: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SIM_PAPERSPACE_KEY=sim["api_key"], AVATARGEN_ADMIN_TOKEN=TOKEN)
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--port", str(port)],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
        )


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Nothing announces readiness across processes: poll the health route, with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"server not healthy:\n{log.read_text()}")


def wait_event(url: str, kind: str, count: int = 1, condition: str = "", last_id: int | None = None) -> None:
    """Read the SSE stream (from the start of the process's history when last_id is 0) until
    `count` events of `kind` whose data contains `condition` were seen."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    seen = 0
    with httpx.stream("GET", f"{url}/admin/api/events", headers=headers, timeout=30) as events:
        current = ""
        for line in events.iter_lines():
            if line.startswith("event: "):
                current = line.removeprefix("event: ")
            elif line.startswith("data: ") and current == kind and condition in line:
                seen += 1
                if seen == count:
                    return


def visible_images_are_whole(bucket: Path) -> int:
    images = sorted(bucket.glob("*.webp"))
    for image in images:
        assert image.with_suffix(".json").is_file(), f"{image.name} has no metadata"
        with Image.open(image) as picture:
            picture.load()
            assert picture.size == (64, 64)
    return len(images)


def paperspace_config(tmp_path: Path, simulator: dict[str, str]) -> Path:
    """avatargen speaking to the standalone simulator exactly as to Paperspace and a remote SD web UI."""
    return write_config(tmp_path, {
        "gpu.provider": "paperspace",
        "gpu.paperspace.api_url": simulator["paperspace_url"],
        "gpu.paperspace.api_key_env": "SIM_PAPERSPACE_KEY",
        "gpu.paperspace.machine_id": simulator["machine_id"],
        "sd.url": simulator["sd_url"],
        "buckets.fallback.max": 400,
    })


def test_sigkill_mid_run_then_restart_stops_machine(tmp_path: Path, simulator: dict[str, str]) -> None:
    config = paperspace_config(tmp_path, simulator)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    server = start_server(config, port, simulator, log)
    try:
        wait_healthy(url, server, log)
        response = httpx.post(f"{url}/admin/api/refill", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 202
        wait_event(url, "image", count=5, last_id=0)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
    assert machine_state(simulator) != "off"  # nobody stopped it: the process died
    unique, fallback = tmp_path / "data" / "unique", tmp_path / "data" / "fallback"
    assert visible_images_are_whole(unique) + visible_images_are_whole(fallback) >= 5

    again = start_server(config, port, simulator, log)
    try:
        wait_healthy(url, again, log)
        # The start-up check stops the orphaned machine; its events are in the history from id 0.
        wait_event(url, "state", condition='"machine_state": "off"', last_id=0)
        assert machine_state(simulator) == "off"
        for bucket in (unique, fallback):
            visible_images_are_whole(bucket)
            assert not list((bucket / ".tmp").glob("*")), "leftover work files were not cleaned up"
            assert not list((bucket / ".claimed").glob("*"))
        assert "no run is active: stopping it" in log.read_text()
    finally:
        stop_gracefully(again, log)


def stop_gracefully(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM; uvicorn shuts down, then re-raises the signal, so the exit status may say SIGTERM."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) in (0, -signal.SIGTERM)
    assert log.read_text().rstrip().splitlines()[-1].endswith(f"Finished server process [{process.pid}]")


@pytest.mark.parametrize("state", ["booting", "generating"])
def test_sigterm_during_a_run_stops_the_machine_before_exit(tmp_path: Path, simulator: dict[str, str],
                                                            state: str) -> None:
    config = paperspace_config(tmp_path, simulator)
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "server.log"
    server = start_server(config, port, simulator, log)
    try:
        wait_healthy(url, server, log)
        response = httpx.post(f"{url}/admin/api/refill", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 202
        wait_event(url, "state", condition=f'"state": "{state}"', last_id=0)
    finally:
        stop_gracefully(server, log)
    assert machine_state(simulator) == "off"
    assert "aborting run" in log.read_text() and "the server is shutting down" in log.read_text()
