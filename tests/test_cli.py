"""`avatargen simulate` and the owner's commands (`status`, `refill`, `abort`) as real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import fast_settings, serving, write_config

ROOT = Path(__file__).resolve().parent.parent


def test_simulate_serves_both_apis_from_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "simulate", "--config", str(config)],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None
        where = json.loads(process.stdout.readline())
        headers = {"Authorization": f"Bearer {where['api_key']}"}
        machine = httpx.get(f"{where['api_url']}/machines/{where['machine_id']}", headers=headers).json()
        assert machine["state"] == "off" and machine["publicIp"] is None
        assert httpx.get(f"{where['api_url']}/machines/{where['machine_id']}").status_code == 401
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{where['sd_url']}/sdapi/v1/progress")  # the web UI is down while the machine is off
    finally:
        process.terminate()
        process.wait(10)


async def test_owner_commands_talk_to_a_running_server(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, admin__token="cli-token", gpu__simulated__boot_delay="2s")

    async def avatargen(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "server.cli", *args, "--url", url, "--token", "cli-token",
                   "--config", str(tmp_path / "config.toml")]
        return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, cwd=ROOT,
                                       timeout=60, check=False)

    async with serving(settings) as (url, _app):
        status = await avatargen("status")
        assert status.returncode == 0, status.stderr
        assert "state: idle (machine off, simulated)" in status.stdout and "unique: 0 (min 0, max 4)" in status.stdout
        refill = await avatargen("refill", "unique")
        assert refill.returncode == 0 and refill.stdout.startswith("started run ")
        assert "0/4 done" in refill.stdout and "4 unique" in refill.stdout
        abort = await avatargen("abort")
        assert abort.returncode == 0 and abort.stdout.startswith("aborting run ")
        again = await avatargen("abort")
        assert (again.returncode == 1 and "no run is active" in again.stderr) or "shutting" in again.stderr
        wrong = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "server.cli", "status", "--url", url, "--token", "nope"],
            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
        assert wrong.returncode == 1 and "token" in wrong.stderr
