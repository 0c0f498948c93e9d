"""`avatargen serve` as a real process: found by `avatargen status` however it was started, and what its
first screen of output says (which config, what it will do; uvicorn's start-up said once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avatargen.config import load_settings
from avatargen.testing import avatargen_server, free_port
from server.first_screen import DEMO_BUCKETS
from tests.support import write_config
from tests.tui_support import wait_for
from tui.cli import build_parser, panel_for

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "discovery-token"


def avatargen(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, AVATARGEN_ADMIN_TOKEN=TOKEN), timeout=120, check=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_status_finds_a_server_started_with_another_port(tmp_path: Path, workers: int) -> None:
    configured = free_port()  # nobody listens there: the server runs on --port
    config = write_config(tmp_path, {"server.port": configured, "server.workers": workers})
    record = tmp_path / "data" / "server.json"
    with avatargen_server(config, tmp_path / "server.log", token=TOKEN) as server:
        assert json.loads(record.read_text())["url"] == server.url
        status = avatargen("status", "--config", str(config))
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("state: idle"), status.stdout
        assert server.stop() == 0, server.log_text()
    assert not record.exists()  # removed at a clean exit
    # Once per uvicorn process, not once more for each simulated service running inside it.
    assert server.log_text().count("Started server process") == workers


async def test_the_panel_finds_a_server_started_with_another_port(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, {"server.port": free_port()})
    monkeypatch.setenv("AVATARGEN_ADMIN_TOKEN", TOKEN)
    with avatargen_server(config, tmp_path / "server.log", token=TOKEN) as server:
        app = panel_for(build_parser().parse_args(["--config", str(config), "--images", "halfcell"]))
        assert app.client.url == server.url
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.main.status is not None, "the server's status")


def test_a_record_left_by_a_killed_server_is_ignored_and_the_message_suggests_url(tmp_path: Path) -> None:
    configured = free_port()
    config = write_config(tmp_path, {"server.port": configured})
    finished = subprocess.Popen([sys.executable, "-c", "pass"])  # its pid names no process once it is reaped
    finished.wait()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "server.json").write_text(json.dumps({"url": f"http://127.0.0.1:{free_port()}",
                                                               "pid": finished.pid}))
    status = avatargen("status", "--config", str(config))
    assert status.returncode == 1
    assert f"cannot reach http://127.0.0.1:{configured}" in status.stderr
    assert "--url http://HOST:PORT" in status.stderr and "Traceback" not in status.stderr


def test_serve_without_a_config_file_says_so_first_and_runs_demo_sized_buckets(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port)], cwd=tmp_path,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, AVATARGEN_ADMIN_TOKEN=TOKEN))
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "Application startup complete" in line:
                break
        status = avatargen("status", cwd=tmp_path)
    finally:
        process.terminate()
        rest = process.communicate(timeout=60)[1]
    assert process.returncode == 0, "".join(lines) + rest
    first = [line.partition(": ")[2].strip() for line in lines[:3]]
    assert "WARNING" in lines[0] and first[0].startswith(f"no config file: neither --config nor a config.toml in "
                                                         f"{tmp_path}; running the built-in defaults, a demo")
    assert first[1] == "config: built-in defaults"
    assert first[2].startswith("buckets: unique 10 to 30, fallback 20 to 40 images (refilled from min to max; up to "
                               "70 images in a run from empty), checked now and every 10m")
    assert "unique: " in status.stdout and "(min 10, max 30)" in status.stdout, status.stdout + status.stderr


def test_the_demo_buckets_are_the_shipped_config_files() -> None:
    shipped = load_settings(ROOT / "config.toml")
    assert {name: (bucket.min, bucket.max) for name, bucket in shipped.buckets.items()} == DEMO_BUCKETS
