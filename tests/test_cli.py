"""The `avatargen simulate` command serves the simulated GPU on its own, configured from config.toml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import write_config

ROOT = Path(__file__).resolve().parent.parent


def test_simulate_serves_both_apis_from_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "simulate", "--config", str(config)],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None
        where = json.loads(process.stdout.readline())
        headers = {"Authorization": f"Bearer {where['api_key']}"}
        machine = httpx.get(f"{where['paperspace_url']}/machines/{where['machine_id']}", headers=headers).json()
        assert machine["state"] == "off" and machine["publicIp"] is None
        assert httpx.get(f"{where['paperspace_url']}/machines/{where['machine_id']}").status_code == 401
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{where['sd_url']}/sdapi/v1/progress")  # the web UI is down while the machine is off
    finally:
        process.terminate()
        process.wait(10)
