"""`avatargen simulate` and the owner's commands (`status`, `refill`, `abort`) as real processes."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from datetime import UTC, date, datetime
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from avatargen.api import DayTotal, History, RunChart, RunMinute
from server.cli import history_lines, main
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
    # The run boots until it is aborted: on a loaded machine each command's process takes seconds to start.
    settings = fast_settings(tmp_path, admin__token="cli-token", gpu__simulated__boot_delay="60s",
                             gpu__simulated__api="runpod")

    async def avatargen(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-X", "importtime", "-m", "server.cli", *args, "--url", url, "--token", "cli-token",
                   "--config", str(tmp_path / "config.toml")]
        return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, cwd=ROOT,
                                       timeout=60, check=False)

    async with serving(settings) as (url, _app):
        status = await avatargen("status")
        assert status.returncode == 0, status.stderr
        assert "state: idle (machine off, simulated)" in status.stdout and "unique: 0 (min 0, max 4)" in status.stdout
        assert "billed at 3600.00 an hour (provider)" in status.stdout  # the pod's own price
        assert "note: pod simpod42xyz keeps its 50 GB volume while stopped" in status.stdout
        assert "last 30 days: 0 images, 0s billed, 0.00 spent (0 days with runs)" in status.stdout
        imported = {line.rpartition("|")[2].strip().split(".")[0] for line in status.stderr.splitlines()}
        assert "httpx" in imported and "textual" not in imported  # a quick command: no control panel loaded
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


async def test_refill_without_names_refills_every_bucket(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, admin__token="cli-token", gpu__simulated__boot_delay="60s",
                             gpu__simulated__api="runpod")
    async with serving(settings) as (url, _app):
        refill = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "server.cli", "refill", "--url", url, "--token", "cli-token",
                             "--config", str(tmp_path / "config.toml")],
            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
        assert refill.returncode == 0, refill.stderr
        assert refill.stdout.startswith("started run ") and "4 unique, 6 fallback" in refill.stdout


def test_refill_names_only_buckets() -> None:
    result = subprocess.run([sys.executable, "-m", "server.cli", "refill", "unique", "uniq"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument BUCKET: no bucket 'uniq'; buckets are unique, fallback" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--port", "99999"], "avatargen serve: error: argument --port: must be at most 65535, got 99999"),
        (["serve", "--port", "http"], "argument --port: expected an integer, got 'http'"),
        (["prompts", "-n", "-3"], "avatargen prompts: error: argument -n: must be at least 1, got -3"),
        (["prompts", "-n", "0"], "argument -n: must be at least 1, got 0"),
        # A bad number gets the same words on every option (argparse's own "invalid int value" nowhere).
        (["prompts", "-n", "abc"], "avatargen prompts: error: argument -n: expected an integer, got 'abc'"),
        (["prompts", "--seed", "x"], "avatargen prompts: error: argument --seed: expected an integer, got 'x'"),
        (["simulate", "--sd-port", "70000"], "argument --sd-port: must be at most 65535, got 70000"),
        (["simulate", "--api-port", "-1"], "argument --api-port: must be at least 0, got -1"),
        (["status", "--url", "127.0.0.1:8080"], "argument --url: must be an http:// or https:// URL with a host"),
        (["abort", "--url", "http://127.0.0.1:99999"], "argument --url: the port must be a number from 0 to 65535"),
    ],
)
def test_command_line_values_are_checked_like_the_config(argv: list[str], message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_with_a_port_out_of_range_exits_2_naming_it(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--port", "99999",
                             "--config", str(write_config(tmp_path))],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --port: must be at most 65535, got 99999" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was touched


@pytest.mark.parametrize("command", ["avatargen", "avatargen-tui"])
def test_both_commands_tell_their_version(command: str) -> None:
    result = subprocess.run([str(Path(sys.executable).parent / command), "--version"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{command} {version('avatargen')}"


def test_serve_on_a_port_in_use_stops_before_touching_the_data_folder(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    data = tmp_path / "data"
    for name, content in {"unique/.tmp/half-written.webp": b"orphan work file", "unique/.claimed/old.webp": b"claim",
                          "unique/lonely.json": b"{}", "fallback/broken.webp": b"not an image",
                          "ledger.sqlite3": b"", "avatargen.log": b"an earlier run\n"}.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(content)

    def snapshot() -> dict[str, bytes | None]:
        return {path.relative_to(data).as_posix(): path.read_bytes() if path.is_file() else None
                for path in sorted(data.rglob("*"))}

    before = snapshot()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--config", str(config),
                                 "--port", str(port)], capture_output=True, text=True, cwd=ROOT, timeout=60,
                                check=False)
    assert result.returncode == 4
    assert result.stderr.splitlines() == [
        f"avatargen: port {port} is already in use on 127.0.0.1 (is another avatargen serve running?)"]
    assert snapshot() == before


def test_serve_runs_on_uvicorns_fast_implementations(tmp_path: Path) -> None:
    """uvicorn[standard] brings httptools and uvloop; the log says which ones run (header limits differ)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--config", str(write_config(tmp_path)),
                                "--port", str(port)], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stderr is not None
        line = next(line for line in process.stderr if "listening on" in line)
        assert line.rstrip().endswith("uvicorn with httptools and uvloop)") and f":{port} " in line
    finally:
        process.terminate()
        process.wait(30)


def test_status_prints_the_charts_as_text() -> None:
    history = History(
        [DayTotal(date(2026, 11, 30), 0, 0, 0), DayTotal(date(2026, 12, 1), 3725.0, 0.786, 120)],
        RunChart("20261201T100000-abc123", datetime(2026, 12, 1, 10, tzinfo=UTC), None,
                 [RunMinute(0, 0.01), RunMinute(12, 0.02), RunMinute(9, 0.0346)]),
    )
    assert history_lines(history) == [  # money as the panel shows it: a run under 0.10 keeps 3 digits
        "this run 20261201T100000-abc123, images per minute: 0 12 9; spent 0.0346",
        "last 2 days: 120 images, 1h 02m billed, 0.79 spent (1 day with runs)",
        "  2026-12-01: 120 images, 1h 02m billed, 0.79",
    ]
